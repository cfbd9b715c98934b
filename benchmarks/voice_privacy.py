"""Voice privacy on FSDD: does McAdams anonymization hide who speaks while keeping what is said?

Two polymodal models on the audio column alone (scratch log-mel/MFCC CNN + BiGRU): one predicts the speaker
(the attacker), one the digit (the utility). FSDD's official split: takes 0-4 of every digit and speaker are the
test rows (250), the rest train (2,250); 5 speakers, so chance speaker accuracy is 0.2.

- clean: both models trained and tested on clean audio;
- ignorant attacker: the clean-trained models tested on McAdams-anonymized test audio (alpha 0.8, VoicePrivacy
  2020 baseline B2), and on anonymized audio with a random alpha per recording in [0.7, 0.9];
- informed attacker: both models retrained on anonymized training audio, tested on anonymized test audio;
- audio_warp: both models trained on clean audio with the spectral-warp augmentation (`train.audio_warp`), tested
  like the clean ones: the digit model is the utility a data owner can keep without ever seeing anonymized audio,
  the speaker model an attacker who augments the same way.

    nice -n 10 python benchmarks/voice_privacy.py [--fsdd ../shared/data/fsdd] [--max-epochs 12] [--audio-warp 0.25]
        [--jobs clean,informed,warp]   # jobs left out keep their results from the --out file (same settings)

With `--audio-encoder speech-embedding` (Google's speech_embedding, frozen, through the feature cache) both models
read the pretrained embedding instead of the scratch CNN; the audio_warp job then has nothing to warp (it applies
to scratch features), so the jobs are clean and informed, run one after the other (they share the cache), and the
results go to benchmarks/results/voice_privacy_speech_embedding.json unless --out says otherwise.
`--speaker-encoder scratch` gives the speaker model (the attacker) the scratch CNN instead, in the same run
(voice_privacy_speech_embedding_scratch_attacker.json).

Prints a table and writes benchmarks/results/voice_privacy.json. Attribution: Free Spoken Digit Dataset,
Zohar Jackson et al. (CC BY-SA 4.0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


def fsdd_tables(fsdd: Path, out: Path, train_takes: int) -> tuple[Path, Path]:
    """train.csv and test.csv (clip, digit, speaker) with FSDD's official split, absolute paths; the training rows
    keep takes 5 .. 5 + train_takes - 1 of each digit and speaker (all 45 by default)."""
    rows = []
    for f in sorted((fsdd / "recordings").iterdir()):
        m = NAME.match(f.name)
        if m:
            rows.append({"clip": str(f), "digit": int(m[1]), "speaker": m[2], "take": int(m[3])})
    df = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    train = df[(df["take"] >= 5) & (df["take"] < 5 + train_takes)]
    train.drop(columns="take").to_csv(out / "train.csv", index=False)
    df[df["take"] < 5].drop(columns="take").to_csv(out / "test.csv", index=False)
    return out / "train.csv", out / "test.csv"


def encoder_of(label: str, args: argparse.Namespace) -> str | None:
    """The audio encoder of the speaker model (--speaker-encoder, else --audio-encoder) or of the digit model."""
    name = args.speaker_encoder or args.audio_encoder if label == "speaker" else args.audio_encoder
    return None if name == "scratch" else name


def fit(train: Path, label: str, args: argparse.Namespace, audio_warp: float = 0.0):
    from polymodal import MultimodalPredictor

    other = "digit" if label == "speaker" else "speaker"
    p = MultimodalPredictor(
        label=label, fusion="early", ignore=[other], modalities={"clip": "audio", other: "categorical"},
        problem_type="multiclass", preprocess={"sample_rate": 8000, "max_audio_seconds": 1.0},
        embed_dim=args.embed_dim, max_epochs=args.max_epochs, patience=args.patience, batch_size=64,
        seed=args.seed, progress=False, audio_warp=audio_warp, audio_encoder=encoder_of(label, args),
    )  # fmt: skip
    start = time.perf_counter()
    p.fit(train)
    return p, time.perf_counter() - start


def fit_and_test(
    label: str, train: Path, tests: dict[str, Path], args: argparse.Namespace, audio_warp: float = 0.0
) -> dict:
    """One model (in its own process): fitted on `train`, its accuracy on each test table."""
    import torch

    torch.set_num_threads(1)
    model, seconds = fit(train, label, args, audio_warp)
    out = {name: float(model.evaluate(t)["accuracy"]) for name, t in tests.items()}
    return out | {"train_s": round(seconds, 1), "epochs": model.metrics_.get("epochs")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fsdd", type=Path, default=ROOT.parent / "shared" / "data" / "fsdd")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "voice_privacy.json")
    ap.add_argument("--alpha", type=float, default=0.8)
    ap.add_argument("--max-epochs", type=int, default=12)
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--embed-dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-takes", type=int, default=45, help="Training takes per digit and speaker (45: all)")
    ap.add_argument(
        "--audio-encoder", default=None, help="pretrained audio encoder: speech-embedding, an HF id or folder"
    )
    ap.add_argument("--speaker-encoder", help="the speaker model's (the attacker's) encoder, if not --audio-encoder's;"
                    " scratch: the scratch CNN")  # fmt: skip
    ap.add_argument("--audio-warp", type=float, default=0.25, help="train.audio_warp of the 'warp' models")
    ap.add_argument("--jobs", default=None, help="which models to train (the rest: from --out); default: all")
    args = ap.parse_args()
    if args.audio_encoder and args.out == ap.get_default("out"):
        name = args.audio_encoder + (f"_{args.speaker_encoder}_attacker" if args.speaker_encoder else "")
        args.out = args.out.with_name(f"voice_privacy_{name.replace('-', '_').replace('/', '_')}.json")
    all_jobs = ["clean", "informed"] if args.audio_encoder else ["clean", "informed", "warp"]
    jobs_run = args.jobs.split(",") if args.jobs else all_jobs
    same = ("alpha", "max_epochs", "patience", "embed_dim", "seed", "train_takes", "audio_encoder", "speaker_encoder")
    previous = json.loads(args.out.read_text()) if args.out.is_file() else None
    if set(jobs_run) != set(all_jobs):
        if previous is None or any(previous["settings"].get(k) != getattr(args, k) for k in same):
            raise SystemExit(f"--jobs {args.jobs}: the other results come from {args.out}, which needs the same {same}")

    from concurrent.futures import ProcessPoolExecutor

    from polymodal.privacy import PrivacySettings, anonymize_table

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="voice_privacy_"))
    train, test = fsdd_tables(args.fsdd, work / "clean", args.train_takes)
    t0 = time.perf_counter()
    fixed = PrivacySettings(alpha=args.alpha, modalities={"clip": "audio"})
    test_anon, _ = anonymize_table(test, work / "test_anon", fixed)
    anon_seconds = time.perf_counter() - t0
    ranged = PrivacySettings(alpha_range=(0.7, 0.9), seed=args.seed, modalities={"clip": "audio"})
    test_rand, _ = anonymize_table(test, work / "test_rand", ranged)
    train_anon = anonymize_table(train, work / "train_anon", fixed)[0] if "informed" in jobs_run else None
    print(f"anonymized in {time.perf_counter() - t0:.0f} s", flush=True)

    # The models train at once, one process each (a shared machine gives each process its share).
    tests = {"clean": test, "ignorant (alpha 0.8)": test_anon, "ignorant (alpha 0.7-0.9 per clip)": test_rand}
    jobs = {}
    # A frozen pretrained encoder: one model after the other, so each clip is embedded once (the feature cache).
    one_by_one = args.audio_encoder and encoder_of("speaker", args) == args.audio_encoder
    with ProcessPoolExecutor(max_workers=1 if one_by_one else 2 * len(jobs_run)) as pool:
        for label in ("speaker", "digit"):
            if "clean" in jobs_run:
                jobs[label, "clean"] = pool.submit(fit_and_test, label, train, tests, args)
            if "informed" in jobs_run:
                informed = {"informed (alpha 0.8)": test_anon}
                jobs[label, "informed"] = pool.submit(fit_and_test, label, train_anon, informed, args)
            if "warp" in jobs_run:
                jobs[label, "warp"] = pool.submit(fit_and_test, label, train, tests, args, args.audio_warp)
    results: dict[str, dict] = {}
    for label in ("speaker", "digit"):
        old = (previous or {}).get("results", {}).get(label, {})
        done = {job: f.result() for (lab, job), f in jobs.items() if lab == label}
        clean = done.get("clean") or {k: v for k, v in old.items() if not isinstance(v, dict) and "informed" not in k}
        informed = done.get("informed") or {k: v for k, v in old.items() if k.startswith("informed")}
        for job, r in (("clean", clean), ("informed", informed)):
            if job not in done:  # kept from --out
                r["train_s"], r["epochs"] = old["train_s"][job], old["epochs"][job]
        results[label] = {k: v for k, v in (clean | informed).items() if k not in ("train_s", "epochs")}
        results[label]["train_s"] = {"clean": clean["train_s"], "informed": informed["train_s"]}
        results[label]["epochs"] = {"clean": clean["epochs"], "informed": informed["epochs"]}
        warp = done.get("warp") or old.get("audio_warp")
        if warp is not None:
            results[label]["audio_warp"] = warp | {"strength": args.audio_warp}
        print(label, json.dumps(results[label]), flush=True)

    sp, dg = results["speaker"], results["digit"]
    goal = {
        "speaker_ignorant_le_0.4": sp["ignorant (alpha 0.8)"] <= 0.4,
        # Utility as the data owner sees it: the digit model trained and tested on anonymized audio.
        "digit_drop_le_5_points_trained_on_anonymized": dg["clean"] - dg["informed (alpha 0.8)"] <= 0.05,
        # The clean-trained digit model applied to anonymized audio (a harder, mismatched setting).
        "digit_drop_le_5_points_trained_on_clean": dg["clean"] - dg["ignorant (alpha 0.8)"] <= 0.05,
        "speaker_informed_le_0.4": sp["informed (alpha 0.8)"] <= 0.4,
    }
    if "audio_warp" in dg:
        # Trained on clean audio only (with the warp), tested on anonymized audio; the drop is counted from the
        # better clean accuracy of the two clean-trained digit models.
        best_clean = max(dg["clean"], dg["audio_warp"]["clean"])
        goal["digit_drop_le_5_points_trained_on_clean_with_audio_warp"] = (
            best_clean - dg["audio_warp"]["ignorant (alpha 0.8)"] <= 0.05
        )
        goal["speaker_le_0.4_attacker_with_audio_warp"] = sp["audio_warp"]["ignorant (alpha 0.8)"] <= 0.4
    print(f"\n{'condition':36s} {'speaker acc (privacy, chance 0.2)':>34s} {'digit acc (utility)':>20s}")
    for cond in ("clean", "ignorant (alpha 0.8)", "ignorant (alpha 0.7-0.9 per clip)", "informed (alpha 0.8)"):
        print(f"{cond:36s} {sp[cond]:34.3f} {dg[cond]:20.3f}")
    if "audio_warp" in dg:
        for cond in ("clean", "ignorant (alpha 0.8)", "ignorant (alpha 0.7-0.9 per clip)"):
            print(f"{'audio_warp, ' + cond:36s} {sp['audio_warp'][cond]:34.3f} {dg['audio_warp'][cond]:20.3f}")
    print("goal:", goal)
    out = {
        "benchmark": "voice_privacy",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "nice -n 10 python benchmarks/voice_privacy.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("fsdd", "out") and v is not None
        ),
        "data": "FSDD official split: takes 0-4 test (250 rows), the training rows from takes 5-49 "
        f"(first {args.train_takes} takes per digit and speaker); 5 speakers",
        "models": "polymodal MultimodalPredictor, audio column only; "
        + "; ".join(
            f"{label}: "
            + (
                f"frozen pretrained encoder {encoder_of(label, args)} (16 kHz)"
                if encoder_of(label, args)
                else "scratch encoder, sample rate 8000"
            )
            for label in ("speaker", "digit")
        ),  # fmt: skip
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": results,
        "goal": goal,
        "anonymize_test_seconds": round(anon_seconds, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads_per_model": 1},
        "jobs_run": jobs_run,
        "jobs_kept_from": None
        if set(jobs_run) == set(all_jobs)
        else {"file": str(args.out.name), "date": previous.get("date"), "command": previous.get("command")},
        "train_rows": int(len(pd.read_csv(train))),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from polymodal.model.artifact import write_json

    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
