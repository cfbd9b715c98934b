"""AV-digit-order: how far the fused label can go from the two branches' readouts, measured without training.

A reference for `benchmarks/av_video.py --readout`, computed in the same run: each branch's text model is read
out (`polymodal.model.readout.Readout`, three greedy steps) and two fixed rules label each clip:
- "hard": the two decoded digit strings compared (equal: same; equal as sets: permuted; else different);
- "bayes": the posterior of the three labels under the dataset's own generator (3 distinct shown digits; same:
  spoken = shown; permuted: one of the 5 other orders; different: one position replaced by a digit not shown),
  taking each step's distribution over the ten digits as that position's likelihood, with the steps independent.
  With calibrated readouts no fusion could do better on average; a learnt one can do worse.
On the training clips the branches saw these clips in their own fits, so their readouts there are more sure
and more often right than on the test clips: the gap between the two rows is what a fusion trained on those
readouts must not trust.

    python benchmarks/av_video_bayes.py --data DIR --frames runs/.../frames_order --sound runs/.../sound_order
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LABELS = ["same", "permuted", "different"]


def readouts(data: Path, split: str, folder: Path, name: str, steps: int = 3) -> np.ndarray:
    """(clips, steps, 10): each greedy step's distribution over the digits, renormalized."""
    import torch

    from polymodal import MultimodalPredictor
    from polymodal.model.artifact import load_folder
    from polymodal.model.folder import build_readout
    from polymodal.tasks.text import SPECIALS

    df = pd.read_csv(data / f"{split}.csv")
    config, state, _, _ = load_folder(folder)
    words = [*SPECIALS, *sorted(DIGITS)]
    described = {k: config[k] for k in ("config", "schema", "input_specs", "task")}
    readout = build_readout(described | {"steps": steps, "words": words})
    readout.net.load_state_dict(state)
    pipeline = MultimodalPredictor.load(folder).engine.pipeline
    parts = []
    for i in range(0, len(df), 256):
        rows = df.iloc[i : i + 256]
        media, frozen, _ = pipeline.decode(rows, data)
        x = pipeline.features(rows, media, frozen).inputs[name]
        parts.append(readout.distributions(torch.from_numpy(x))[0].numpy())
    p = np.concatenate(parts)[:, :, [words.index(d) for d in DIGITS]]
    return p / p.sum(-1, keepdims=True)


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def bayes(shown: np.ndarray, spoken: np.ndarray) -> np.ndarray:
    """The most probable label per clip (see the module docstring); `shown`, `spoken`: (clips, 3, 10)."""
    orders = np.array(list(itertools.permutations(range(10), 3)))  # every shown sequence: 720
    lf, ls = np.log(shown + 1e-6), np.log(spoken + 1e-6)
    frames = sum(lf[:, i, orders[:, i]] for i in range(3))  # (clips, 720)

    def heard(seqs: np.ndarray) -> np.ndarray:
        return sum(ls[:, i, seqs[:, i]] for i in range(3))

    same = frames + heard(orders)
    others = [p for p in itertools.permutations(range(3)) if p != (0, 1, 2)]
    permuted = _logsumexp(np.stack([frames + heard(orders[:, list(p)]) for p in others], -1), -1) - np.log(5)
    replaced = []
    for pos in range(3):
        for digit in range(10):
            seqs = orders.copy()
            seqs[:, pos] = digit
            allowed = ~(orders == digit).any(1)
            replaced.append(np.where(allowed[None], frames + heard(seqs), -np.inf))
    different = _logsumexp(np.stack(replaced, -1), -1) - np.log(21)
    post = np.stack([_logsumexp(same, 1), _logsumexp(permuted, 1), _logsumexp(different, 1)], 1)
    return np.array(LABELS)[post.argmax(1)]


def hard(shown: np.ndarray, spoken: np.ndarray) -> np.ndarray:
    f, s = shown.argmax(-1), spoken.argmax(-1)
    equal, as_sets = (f == s).all(1), (np.sort(f, 1) == np.sort(s, 1)).all(1)
    return np.where(equal, "same", np.where(as_sets, "permuted", "different"))


def reference(data: Path, frames: Path, sound: Path, splits: tuple[str, ...] = ("test", "train")) -> dict:
    """Per split: the hard and Bayes rules' accuracy (per label too), and each branch's right digits by position."""
    out = {}
    for split in splits:
        shown = readouts(data, split, frames, "video:frames")
        spoken = readouts(data, split, sound, "video:sound")
        truth = pd.read_csv(data / f"{split}.csv")["label"].to_numpy()
        captions = pd.read_csv(data / f"captions_{split}.csv")
        row = {"clips": len(truth)}
        for rule, fn in (("hard", hard), ("bayes", bayes)):
            guess = fn(shown, spoken)
            row[rule] = round(float((guess == truth).mean()), 4)
            row[f"{rule}_by_label"] = {k: round(float((guess[truth == k] == k).mean()), 4) for k in LABELS}
        for branch, p, col in (("frames", shown, "shown"), ("sound", spoken, "spoken")):
            want = np.array([[DIGITS.index(w) for w in s.split()] for s in captions[col]])
            row[f"{branch}_right_by_position"] = [round(float(x), 4) for x in (p.argmax(-1) == want).mean(0)]
        out[split] = row
        print(split, json.dumps(row), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--frames", type=Path, required=True, help="the frames branch's text model folder")
    ap.add_argument("--sound", type=Path, required=True, help="the sound branch's text model folder")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    reference(a.data, a.frames, a.sound)


if __name__ == "__main__":
    main()
