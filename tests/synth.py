"""Small generated multimodal tables for the tests: the label needs image and text together.

label = 2 * a + b, where a is the image's colour (red/blue) and b the animal in the text (cat/dog). Each of
image and text alone reaches at most 50 % (chance 25 %); audio, price and shade carry no label information.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image

CATS = ["cat", "kitten", "feline"]
DOGS = ["dog", "puppy", "hound"]
FILLER = ["a", "the", "small", "big", "happy", "photo", "of", "my", "sleepy", "old", "young", "here", "is"]


def make_table(folder: Path, n: int, seed: int = 0, sr: int = 8000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        a, b = int(rng.integers(2)), int(rng.integers(2))
        pix = rng.normal(0.5, 0.15, size=(16, 16, 3))
        pix[..., 0 if a == 0 else 2] += 0.35
        Image.fromarray((np.clip(pix, 0, 1) * 255).astype("uint8")).save(folder / "img" / f"{seed}_{i}.png")
        t = np.arange(int(0.25 * sr)) / sr
        tone = 0.3 * np.sin(2 * np.pi * rng.choice([300, 900]) * t) + rng.normal(0, 0.05, t.size)
        sf.write(folder / "wav" / f"{seed}_{i}.wav", tone.astype("float32"), sr)
        words = list(rng.choice(FILLER, size=4)) + [str(rng.choice(DOGS if b else CATS))]
        rng.shuffle(words)
        rows.append(
            {
                "image": f"img/{seed}_{i}.png",
                "caption": " ".join(words),
                "clip": f"wav/{seed}_{i}.wav",
                "price": float(rng.normal(10, 3)),
                "shade": str(rng.choice(["light", "dark", "mid"])),
                "y": 2 * a + b,
                "score": 3.0 * a + 2.0 * b + float(rng.normal(0, 0.1)),
            }
        )
    return pd.DataFrame(rows)


def write_split(folder: Path, n_train: int = 240, n_test: int = 120) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    train, test = make_table(folder, n_train, seed=1), make_table(folder, n_test, seed=2)
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    return folder / "train.csv", folder / "test.csv"


FAST = dict(
    preprocess={"image_size": 16, "sample_rate": 8000, "n_mels": 32, "n_mfcc": 13},
    embed_dim=32,
    hidden=32,
    batch_size=32,
    max_epochs=25,
    patience=8,
    lr=3e-3,
    progress=False,
)


def write_tabular(folder: Path, n: int = 200, seed: int = 0) -> Path:
    """A small tabular task (two numbers, a category, a yes/no label): an epoch is a fraction of a second."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    c = rng.choice(["x", "y", "z"], size=n)
    y = np.where(a + b + (c == "x") + rng.normal(0, 0.5, size=n) > 0.5, "yes", "no")
    path = Path(folder) / "t.csv"
    pd.DataFrame({"a": a, "b": b, "c": c, "y": y}).to_csv(path, index=False)
    return path
