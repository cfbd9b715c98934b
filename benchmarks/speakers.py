"""Unseen speakers: leave-one-speaker-out on AV-digits, pretrained speech embedding vs scratch MFCC audio.

The standard AV-digits test split (FSDD takes 0-4) holds the same 5 speakers as training, so it rewards knowing
their voices. Here each fold holds one speaker out entirely: the model trains on the other four (validation: one
of those four, whole, via `data.split_by`) and is scored on the held-out speaker. Tables come from
../shared/bench/make_av_digits.py (0 dB, and its 20 dB variant); in every fold:

- fused and image entries are scored on the held-out speaker's test-split rows (takes 0-4: 50 rows, whose
  handwritten digits come from the generator's test image pool, so neither voice nor picture was seen);
- audio-only entries are scored on all 500 recordings of the held-out speaker (no picture involved).

Entries (all in one run): fused = speech-embedding audio + scratch image (late fusion, modality dropout 0.5), the
same with early fusion and no dropout, and with scratch MFCC audio; audio alone with each encoder (the MFCC one is
the peer); image alone; the average of the fold's two unimodal models (not trained: their probabilities); on the
20 dB table audio alone with each encoder. Then `tune` with grouped validation (`--split-by speaker`) against
tune with random validation, the best model of each scored on the held-out speaker.

With `--refit` every trained entry uses `train.refit`: once the validation speaker has chosen the epoch, the
model trains again on all four speakers for that many epochs (by default the validation speaker never trains).
The `tune` part does not refit: it compares how the two validations choose.

    nice -n 10 python benchmarks/speakers.py [--shared ../shared] [--max-epochs 50] [--patience 15]
        [--image-size 16] [--tune-trials 6] [--tune-folds 5] [--parts loso,snr20,tune] [--entries A,B] [--refit]

Prints tables and writes benchmarks/results/speakers.json. Attribution: Free Spoken Digit Dataset, Zohar Jackson
et al. (CC BY-SA 4.0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from av_digits import build_table  # noqa: E402  (the shared table, built once)

SPEECH = "speech-embedding"
# name -> inputs kept, audio encoder (None: scratch MFCC), fusion, modality dropout, scored on ("test" | "all audio").
# The fused entries: late fusion with modality dropout 0.5, so each input's head must answer alone: with early
# fusion and no dropout the model leans on the audio, whose voices are the training speakers' (probes on the
# 5 folds, 16 px: early 0.88 on the hardest speaker, late + dropout 0.92).
ENTRIES = {
    "fused (speech-embedding + image)": (["audio", "image"], SPEECH, "late", 0.5, "test"),
    "image only": (["image"], None, "early", 0.0, "test"),
    "audio only (speech-embedding)": (["audio"], SPEECH, "early", 0.0, "all audio"),
    "audio only (MFCC)": (["audio"], None, "early", 0.0, "all audio"),
    "fused early without dropout (speech-embedding + image)": (["audio", "image"], SPEECH, "early", 0.0, "test"),
    "fused (MFCC + image)": (["audio", "image"], None, "late", 0.5, "test"),
}
SNR20_ENTRIES = ("audio only (speech-embedding)", "audio only (MFCC)")
# Not trained: the average of the class probabilities of the fold's two unimodal models (the late ensemble of
# `compare`), on the held-out speaker's test rows.
ENSEMBLE = "ensemble: average of audio only (speech-embedding) and image only"
MEMBERS = ("audio only (speech-embedding)", "image only")
PROBA: dict[tuple[str, str, str], pd.DataFrame] = {}  # (table key, entry, speaker) -> probabilities on test rows


def fold_tables(data: Path, speaker: str) -> dict[str, Path]:
    """The fold's CSVs beside the table (its relative media paths resolve there): training rows of the other
    speakers; the held-out speaker's test-split rows; all of the held-out speaker's rows."""
    train, test = pd.read_csv(data / "train.csv"), pd.read_csv(data / "test.csv")
    parts = {
        "train": train[train.speaker != speaker],
        "test": test[test.speaker == speaker],
        "all audio": pd.concat([train[train.speaker == speaker], test[test.speaker == speaker]]),
    }
    paths = {}
    for name, df in parts.items():
        paths[name] = data / f"loso_{speaker}_{name.replace(' ', '_')}.csv"
        df.to_csv(paths[name], index=False)
    return paths


def options(inputs: list[str], audio_encoder: str | None, a: argparse.Namespace, seed: int, fusion: str = "early",
            modality_dropout: float = 0.0) -> dict:  # fmt: skip
    drop = [c for c in ("audio", "image") if c not in inputs]
    opts = {
        "label": "digit", "fusion": fusion, "ignore": drop, "split_by": "speaker", "modality_dropout": modality_dropout,
        "preprocess": {"image_size": a.image_size, "sample_rate": 8000}, "max_epochs": a.max_epochs,
        "patience": a.patience, "seed": seed, "progress": False, "cache_dir": str(a.cache_dir),
        "refit": a.refit,
    }  # fmt: skip
    if audio_encoder:
        opts["audio_encoder"] = audio_encoder
    return opts


def run_fold(name: str, data: Path, speaker: str, a: argparse.Namespace, key: str) -> dict:
    from polymodal import MultimodalPredictor

    inputs, encoder, fusion, dropout, scored_on = ENTRIES[name]
    tables = fold_tables(data, speaker)
    start = time.perf_counter()
    p = MultimodalPredictor(**options(inputs, encoder, a, a.seed, fusion, dropout)).fit(tables["train"])
    fit_s = time.perf_counter() - start
    m = p.evaluate(tables[scored_on], group_by=None)
    if name in MEMBERS:
        PROBA[key, name, speaker] = p.predict_proba(tables["test"])
    return {"speaker": speaker, "accuracy": m["accuracy"], "rows": m["n"], "valid_groups": p.metrics_["valid_groups"],
            "valid_accuracy": p.metrics_["valid"]["accuracy"], "epochs": p.metrics_["epochs"],
            "fit_seconds": round(fit_s, 1)}  # fmt: skip


def entry_settings() -> dict:
    keys = ("inputs", "audio_encoder", "fusion", "modality_dropout", "scored_on")
    audio = {name: (v[1] or "scratch (MFCC)") if "audio" in v[0] else None for name, v in ENTRIES.items()}
    return {name: dict(zip(keys, (v[0], audio[name], *v[2:]), strict=True)) for name, v in ENTRIES.items()}


def ensemble_fold(data: Path, speaker: str, key: str) -> dict:
    """The fold's two unimodal models averaged (class probabilities), scored on the held-out speaker's test rows."""
    y = pd.read_csv(data / f"loso_{speaker}_test.csv").digit.astype(str).to_numpy()
    probs = [PROBA[key, m, speaker] for m in MEMBERS]
    cols = sorted(probs[0].columns)
    mean = sum(p[cols].to_numpy() for p in probs) / len(probs)
    pred = pd.Index(cols).astype(str).to_numpy()[mean.argmax(axis=1)]
    return {"speaker": speaker, "accuracy": float((pred == y).mean()), "rows": len(y), "fit_seconds": 0.0}


def summarize(name: str, folds: list[dict], scored_on: str) -> dict:
    accs = [f["accuracy"] for f in folds]
    return {"entry": name, "scored_on": scored_on, "mean": statistics.mean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "min": min(accs), "max": max(accs),
            "fit_seconds": round(sum(f["fit_seconds"] for f in folds), 1), "folds": folds}  # fmt: skip


def run_tune(data: Path, speaker: str, grouped: bool, a: argparse.Namespace) -> dict:
    """tune on the other four speakers (grouped or random validation), its best model scored on `speaker`."""
    from polymodal import MultimodalPredictor
    from polymodal.config import Config
    from polymodal.studies.tune import tune

    tables = fold_tables(data, speaker)
    base = options(["audio", "image"], SPEECH, a, 0)
    cfg = {"data": {"split_by": "speaker" if grouped else None, "ignore": [] if grouped else ["speaker"]},
           "preprocess": base["preprocess"], "encoders": {"audio": {"name": SPEECH}, "cache_dir": base["cache_dir"]},
           "train": {"max_epochs": a.max_epochs, "patience": a.patience, "progress": False}}  # fmt: skip
    space = {
        "fusion.name": {"type": "categorical", "choices": ["early", "late", "attention"]},
        "train.lr": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
        "train.modality_dropout": {"type": "categorical", "choices": [0.0, 0.25, 0.5]},
        "encoders.embed_dim": {"type": "categorical", "choices": [32, 64, 128]},
        # tune's default space still applies path by path: its picture sizes (up to 64 px) and fine-tuning the
        # speech encoder would cost each trial minutes on a CPU, so both are fixed here
        "preprocess.image_size": a.image_size,
        "encoders.freeze": True,
    }
    out = Path(tempfile.mkdtemp(prefix=f"speakers_tune_{speaker}_{'grouped' if grouped else 'random'}_"))
    start = time.perf_counter()
    s = tune(tables["train"], "digit", out, trials=a.tune_trials, space=space, keep=1, pruner="none", seed=0,
             config=Config.from_dict(cfg))  # fmt: skip
    best = MultimodalPredictor.load(out / "best")
    m = best.evaluate(tables["test"], group_by=None)
    return {"speaker": speaker, "validation": "grouped" if grouped else "random", "best_valid": s["best"]["value"],
            "best_params": s["best"]["params"], "held_out_accuracy": m["accuracy"], "rows": m["n"],
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "polymodal_av_digits")
    ap.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "polymodal_speakers_cache")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speakers.json")
    ap.add_argument("--max-epochs", type=int, default=50)
    ap.add_argument("--patience", type=int, default=15)
    ap.add_argument("--image-size", type=int, default=16, help="the pictures are 8x8 digits upscaled: 16 px suffices")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tune-trials", type=int, default=6)
    ap.add_argument("--tune-folds", type=int, default=5, help="held-out speakers the tune comparison runs on")
    refit_help = "train.refit in every fold: the validation speaker trains too, for the epochs it chose"
    ap.add_argument("--refit", action="store_true", help=refit_help)
    ap.add_argument("--parts", default="loso,snr20,tune")
    ap.add_argument("--entries", default=",".join(ENTRIES), help="comma-separated entry names (none holds a comma)")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    unknown = [e for e in a.entries.split(",") if e not in ENTRIES]
    if unknown:  # a misspelt entry would otherwise be skipped without a word
        ap.error(f"unknown entries {unknown}; choose from {list(ENTRIES)}")
    previous = json.loads(a.out.read_text()) if a.out.exists() else {}

    data = build_table(a.shared, a.data)
    data20 = build_table(a.shared, a.data.with_name(a.data.name + "_snr20"), ["--snr-db", "20"])
    speakers = sorted(pd.read_csv(data / "train.csv").speaker.unique())
    report = {
        "benchmark": "speakers",
        "command": "python benchmarks/speakers.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_at_start": os.getloadavg()[0],
        },  # fmt: skip
        "settings": {
            "max_epochs": a.max_epochs,
            "seed": a.seed,
            "speakers": speakers,
            "patience": a.patience,
            "refit": a.refit,
            "image_size": a.image_size,
            "entries": entry_settings(),
            "ensemble": {"entry": ENSEMBLE, "members": list(MEMBERS), "combine": "mean of class probabilities"},
            "tune_trials": a.tune_trials,
            "tune_folds": a.tune_folds,
        },  # fmt: skip
        "loso": previous.get("loso", []),
        "snr20": previous.get("snr20", []),
        "tune": previous.get("tune", {}),
    }
    # a resumed run (--parts) keeps the earlier parts' results: each invocation and the parts it ran are listed
    report["invocations"] = previous.get("invocations", []) + [
        {
            "command": report["command"],
            "parts": sorted(parts),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_at_start": report["machine"]["load_at_start"],
        }
    ]

    def save() -> None:
        from polymodal.model.artifact import write_json

        a.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(a.out, report)  # atomic, after each entry: an interrupted run keeps what finished

    def loso(table: Path, names: list[str], key: str) -> None:
        done = {r["entry"]: r for r in report[key]}
        for name in names:
            folds = []
            for speaker in speakers:
                folds.append(run_fold(name, table, speaker, a, key))
                f = folds[-1]
                print(f"[{key}] {name:34s} held out {speaker:9s} acc {f['accuracy']:.4f} ({f['rows']} rows, "
                      f"{f['fit_seconds']:.0f} s)", flush=True)  # fmt: skip
            done[name] = summarize(name, folds, ENTRIES[name][4])
            if all((key, m, sp) in PROBA for m in MEMBERS for sp in speakers) and ENSEMBLE not in done:
                folds = [ensemble_fold(table, sp, key) for sp in speakers]
                print(f"[{key}] {ENSEMBLE}: " + ", ".join(f"{f['speaker']} {f['accuracy']:.4f}" for f in folds))
                done[ENSEMBLE] = summarize(ENSEMBLE, folds, "test")
            report[key] = list(done.values())
            save()

    if "loso" in parts:
        loso(data, [e for e in a.entries.split(",") if e in ENTRIES], "loso")
    if "snr20" in parts:
        loso(data20, [e for e in a.entries.split(",") if e in SNR20_ENTRIES], "snr20")
    if "tune" in parts:
        runs = []
        for speaker in speakers[: a.tune_folds]:
            for grouped in (True, False):
                runs.append(run_tune(data, speaker, grouped, a))
                r = runs[-1]
                print(f"[tune] {r['validation']:7s} validation, held out {speaker:9s}: valid {r['best_valid']:.4f} "
                      f"held-out {r['held_out_accuracy']:.4f} ({r['seconds']:.0f} s)", flush=True)  # fmt: skip
        summary = {}
        for mode in ("grouped", "random"):
            rs = [r for r in runs if r["validation"] == mode]
            summary[mode] = {"held_out_mean": statistics.mean(r["held_out_accuracy"] for r in rs),
                             "valid_mean": statistics.mean(r["best_valid"] for r in rs)}  # fmt: skip
        report["tune"] = {"runs": runs, "summary": summary}
        save()

    from rich.console import Console
    from rich.table import Table

    for key, title in (("loso", "0 dB"), ("snr20", "20 dB")):
        t = Table(title=f"AV-digits {title}, leave-one-speaker-out (mean ± std over {len(speakers)} held-out speakers)")
        for c in ("entry", "scored on", "accuracy", "min", "max", "fit s"):
            t.add_column(c, justify="left" if c in ("entry", "scored on") else "right")
        for r in report[key]:
            t.add_row(r["entry"], r["scored_on"], f"{r['mean']:.4f} ± {r['std']:.4f}", f"{r['min']:.4f}",
                      f"{r['max']:.4f}", f"{r['fit_seconds']:.0f}")  # fmt: skip
        Console(width=130).print(t)
    if report["tune"]:
        for mode, s in report["tune"]["summary"].items():
            print(f"tune, {mode} validation: validation {s['valid_mean']:.4f}, held out {s['held_out_mean']:.4f}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
