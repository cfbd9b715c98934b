"""Speaker-robust scratch audio on FSDD: which augmentation helps a digit model on a voice it never heard?

Leave one speaker out: a polymodal model on the audio column alone (the scratch log-mel/MFCC CNN + BiGRU) is trained
on 4 of FSDD's 5 speakers and tested on all 500 clips of the 5th, once per speaker; mean and spread over the 5.
Each variant changes one setting of the config tree from the baseline (nothing), then all of them together:

- utterance: `preprocess.audio_norm: utterance` (each clip normalized on its own first);
- specaugment: `train.audio_freq_masks: 2, audio_time_masks: 2` (widths 8 mel bands and 10 frames, the defaults);
- speed: `train.audio_speed: 0.1` (each clip played 0.9-1.1 times as fast);
- warp: `train.audio_warp: 0.25` (the spectral warp that was already there);
- all: the four together.

The training rows are the first --train-takes takes of each digit by the 4 speakers (15 by default: 600 rows, a
reduced setting for a shared 2-core machine); validation holds out whole speakers among them (`data.split_by:
speaker`), so early stopping too rewards what carries over to a new voice.

    nice -n 10 python benchmarks/audio_augment.py [--fsdd ../shared/data/fsdd] [--train-takes 15] [--workers 2]

Prints a table and writes benchmarks/results/audio_augment.json. Attribution: Free Spoken Digit Dataset, Zohar
Jackson et al. (CC BY-SA 4.0).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
SPECAUGMENT = {"train.audio_freq_masks": 2, "train.audio_time_masks": 2}
VARIANTS: dict[str, dict] = {
    "baseline": {},
    "utterance": {"preprocess.audio_norm": "utterance"},
    "specaugment": SPECAUGMENT,
    "speed": {"train.audio_speed": 0.1},
    "warp": {"train.audio_warp": 0.25},
}
VARIANTS["all"] = {k: v for d in VARIANTS.values() for k, v in d.items()}


def fold_tables(fsdd: Path, out: Path, train_takes: int) -> dict[str, tuple[Path, Path]]:
    """Per held-out speaker: (train.csv, test.csv) with absolute paths (clip, digit, speaker)."""
    rows = []
    for f in sorted((fsdd / "recordings").iterdir()):
        m = NAME.match(f.name)
        if m:
            rows.append({"clip": str(f), "digit": int(m[1]), "speaker": m[2], "take": int(m[3])})
    df = pd.DataFrame(rows)
    folds = {}
    for sp in sorted(df["speaker"].unique()):
        folder = out / sp
        folder.mkdir(parents=True, exist_ok=True)
        train = df[(df["speaker"] != sp) & (df["take"] < train_takes)].drop(columns="take")
        train.to_csv(folder / "train.csv", index=False)
        df[df["speaker"] == sp].drop(columns="take").to_csv(folder / "test.csv", index=False)
        folds[sp] = (folder / "train.csv", folder / "test.csv")
    return folds


def run(variant: str, train: Path, test: Path, args: argparse.Namespace) -> dict:
    """One model (in its own process): fitted on `train`, its accuracy on the held-out speaker's `test`."""
    import torch

    from polymodal import MultimodalPredictor

    torch.set_num_threads(1)
    settings = {"preprocess.sample_rate": 8000, "preprocess.max_audio_seconds": 1.0} | VARIANTS[variant]
    p = MultimodalPredictor(
        label="digit", fusion="early", split_by="speaker", modalities={"clip": "audio"}, problem_type="multiclass",
        embed_dim=args.embed_dim, max_epochs=args.max_epochs, patience=args.patience, batch_size=32, seed=args.seed,
        progress=False, **settings,
    )  # fmt: skip
    start = time.perf_counter()
    p.fit(train)
    seconds = time.perf_counter() - start
    return {"accuracy": float(p.evaluate(test)["accuracy"]), "train_s": round(seconds, 1),
            "epochs": p.metrics_.get("epochs")}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fsdd", type=Path, default=ROOT.parent / "shared" / "data" / "fsdd")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "audio_augment.json")
    ap.add_argument("--train-takes", type=int, default=15)
    ap.add_argument("--max-epochs", type=int, default=12)
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--embed-dim", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    from concurrent.futures import ProcessPoolExecutor

    from polymodal.model.artifact import write_json

    started = time.perf_counter()
    folds = fold_tables(args.fsdd, Path(tempfile.mkdtemp(prefix="audio_augment_")), args.train_takes)
    variants = args.variants.split(",")
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        jobs = {(v, sp): pool.submit(run, v, tr, te, args) for v in variants for sp, (tr, te) in folds.items()}
        results = {}
        for v in variants:
            per = {sp: jobs[v, sp].result() for sp in folds}
            acc = np.array([r["accuracy"] for r in per.values()])
            results[v] = {"settings": VARIANTS[v], "loso_mean": round(float(acc.mean()), 4),
                          "loso_std": round(float(acc.std()), 4), "per_speaker": per}  # fmt: skip
            print(v, results[v]["loso_mean"], results[v]["loso_std"], flush=True)
    print(f"\n{'variant':12s} {'LOSO mean':>9s} {'spread':>7s}  per speaker")
    for v, r in results.items():
        per = " ".join(f"{sp}={x['accuracy']:.3f}" for sp, x in r["per_speaker"].items())
        print(f"{v:12s} {r['loso_mean']:9.3f} {r['loso_std']:7.3f}  {per}")
    write_json(args.out, {
        "benchmark": "audio_augment",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "nice -n 10 python benchmarks/audio_augment.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("fsdd", "out")),
        "data": f"FSDD, leave one speaker out (5 folds); training rows: takes 0-{args.train_takes - 1} of each digit "
        "by the other 4 speakers; test: all 500 clips of the held-out speaker",
        "model": "polymodal MultimodalPredictor, audio column only, scratch encoder, sample rate 8000",
        "results": results,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads_per_model": 1,
                    "load_average": os.getloadavg()},
    })  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
