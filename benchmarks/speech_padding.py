"""How to pad short clips for the speech-embedding encoder: measured on FSDD.

Google's speech_embedding needs 0.782 s of 16 kHz audio for one embedding (76 mel frames) and gives one more per
80 ms. FSDD's clips last 0.14-1.3 s (median 0.43 s, 95th percentile 0.67 s), so most are shorter than one window.
Each variant pads (or cuts) every clip to a fixed length, embeds it with polymodal's `speech-embedding` encoder
(the PyTorch conversion of the two ONNX files), pools the windows to one 96-d vector, and a logistic regression on
the vectors (standardized) predicts the digit:

- official split: takes 0-4 of every digit and speaker are the test rows (250), the rest train (2,250);
- leave one speaker out (LOSO): train on 4 speakers, test on the 5th (500 rows), for each of the 5; mean and spread.

Padding: `after` (the clip, then zeros), `before` (zeros, then the clip), `center` (zeros on both sides), `repeat`
(the clip again and again).
Pooling: `mask` (the mean over the windows that hold some of the clip: the encoder's default), `all` (the mean over
every window, padding included). The peer: the same classifier on the mean and standard deviation of the scratch
encoder's log-mel + MFCC features (polymodal's preprocessing, 16 kHz).

    nice -n 10 python benchmarks/speech_padding.py [--fsdd ../shared/data/fsdd] [--threads 1]

Prints a table and writes benchmarks/results/speech_padding.json. Attribution: Free Spoken Digit Dataset, Zohar
Jackson et al. (CC BY-SA 4.0).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
VARIANTS = [  # (padding, seconds, pooling)
    ("after", 0.782, "mask"),
    ("before", 0.782, "mask"),
    ("center", 0.782, "mask"),
    ("repeat", 0.782, "mask"),
    ("after", 1.5, "mask"),
    ("after", 1.5, "all"),
    ("center", 1.5, "mask"),
    ("repeat", 1.5, "mask"),
    ("center", 2.0, "mask"),
]


def load_fsdd(fsdd: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    from polymodal.data.media import decode_audio

    waves, digits, speakers, takes = [], [], [], []
    for f in sorted((fsdd / "recordings").iterdir()):
        m = NAME.match(f.name)
        if m:
            waves.append(decode_audio(str(f), 16000))
            digits.append(int(m[1]))
            speakers.append(m[2])
            takes.append(int(m[3]))
    return waves, np.array(digits), np.array(speakers), np.array(takes)


def pad(w: np.ndarray, n: int, mode: str) -> np.ndarray:
    """The library's padding (`fit_length`: center, repeat, after), or `before` (zeros, then the clip)."""
    from polymodal.preprocess.pretrained import fit_length

    if mode != "before":
        return fit_length(w, n, mode)
    out = np.zeros(n, np.float32)
    w = w[:n]
    out[n - len(w) :] = w
    return out


def embed(encoder, waves: list[np.ndarray], n: int, mode: str, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(pooled over the clip's windows, pooled over all windows) of every clip."""
    import torch

    masked, every = [], []
    with torch.inference_mode():
        for s in range(0, len(waves), batch):
            x = torch.from_numpy(np.stack([pad(w, n, mode) for w in waves[s : s + batch]]))
            frames = encoder.frames(x)
            mask = encoder.window_mask(x, frames.shape[1]).float()[..., None]
            masked.append(((frames * mask).sum(1) / mask.sum(1)).numpy())
            every.append(frames.mean(1).numpy())
    return np.concatenate(masked), np.concatenate(every)


def mfcc_stats(waves: list[np.ndarray]) -> np.ndarray:
    from polymodal.config import PreprocessConfig
    from polymodal.preprocess import log_mel_mfcc

    cfg = PreprocessConfig()
    n = int(16000 * 1.0)
    out = []
    for s in range(0, len(waves), 256):
        x = np.stack([pad(w, n, "after") for w in waves[s : s + 256]])
        f = log_mel_mfcc(x, cfg)
        out.append(np.concatenate([f.mean(-1), f.std(-1)], axis=1))
    return np.concatenate(out)


def scores(x: np.ndarray, digits: np.ndarray, speakers: np.ndarray, takes: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def acc(train: np.ndarray, test: np.ndarray) -> float:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0))
        clf.fit(x[train], digits[train])
        return float((clf.predict(x[test]) == digits[test]).mean())

    official = acc(takes >= 5, takes < 5)
    loso = {sp: acc(speakers != sp, speakers == sp) for sp in sorted(set(speakers))}
    vals = np.array(list(loso.values()))
    return {"official": round(official, 4), "loso_mean": round(float(vals.mean()), 4),
            "loso_std": round(float(vals.std()), 4), "loso": {k: round(v, 4) for k, v in loso.items()}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fsdd", type=Path, default=ROOT.parent / "shared" / "data" / "fsdd")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speech_padding.json")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    from polymodal.data.schema import Modality
    from polymodal.encoders.pretrained import build, resolve
    from polymodal.model.artifact import write_json

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    waves, digits, speakers, takes = load_fsdd(args.fsdd)
    encoder = build(resolve("speech-embedding"), Modality.AUDIO).eval()
    rows, cache = [], {}
    for mode, seconds, pooling in VARIANTS:
        n = int(round(seconds * 16000))
        if (mode, n) not in cache:
            t0 = time.perf_counter()
            cache[mode, n] = (*embed(encoder, waves, n, mode), time.perf_counter() - t0)
        masked, every, secs = cache[mode, n]
        r = scores(masked if pooling == "mask" else every, digits, speakers, takes)
        rows.append({"padding": mode, "seconds": seconds, "pooling": pooling, **r, "embed_s": round(secs, 1)})
        print(rows[-1], flush=True)
    peer = scores(mfcc_stats(waves), digits, speakers, takes)
    rows.append({"padding": "after", "seconds": 1.0, "pooling": "log-mel + MFCC mean and std (peer)", **peer})
    print(f"\n{'padding':8s} {'seconds':>7s} {'pooling':36s} {'official':>8s} {'LOSO mean':>9s} {'LOSO std':>8s}")
    for r in rows:
        print(f"{r['padding']:8s} {r['seconds']:7.3f} {r['pooling']:36s} {r['official']:8.3f} {r['loso_mean']:9.3f} "
              f"{r['loso_std']:8.3f}")  # fmt: skip
    write_json(args.out, {
        "benchmark": "speech_padding",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": f"nice -n 10 python benchmarks/speech_padding.py --threads {args.threads}",
        "data": "FSDD, 2,500 clips at 16 kHz, 5 speakers; official split (test: takes 0-4) and leave one speaker out",
        "classifier": "scikit-learn StandardScaler + LogisticRegression(C=1, max_iter=3000)",
        "results": rows,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads": args.threads},
    })  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
