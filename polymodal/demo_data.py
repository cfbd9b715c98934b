"""Offline generator of a small multimodal digit-classification dataset for ``make demo``.

Every row describes one digit (the label, 0-9) through several weak views, so that no single
modality solves the task and fusing them clearly helps:

* image: a scikit-learn ``load_digits`` bitmap upscaled to 32x32 with heavy pixel noise and a random
  occluding block; the source bitmaps are split 70/30 per digit so test images are unseen.
* audio: a DTMF-style two-tone "spoken" digit with a random pitch shift ("voice") and strong white noise.
* text: a short sentence giving only the parity or size of the digit (a subset, never the digit).
* price / color: tabular columns weakly correlated with the label.

About 5 % of rows lack text and another 5 % lack an image (never both) to exercise missing modalities.
Everything is deterministic for a given seed and uses only numpy, Pillow, soundfile, scikit-learn, pandas.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image
from sklearn.datasets import load_digits

from polymodal.files import atomic_open

SAMPLE_RATE = 8000
IMAGE_SIZE = 32
IMAGE_NOISE_STD = 0.4 * 255
OCCLUDER = 12
SNR_DB = -6.0
PITCH_JITTER = 0.06  # relative "voice" shift; large enough to blur neighbouring DTMF tones
COLORS = ("red", "green", "blue")
# Standard DTMF keypad: (row frequency, column frequency) in Hz for keys 0-9.
DTMF = {
    1: (697, 1209), 2: (697, 1336), 3: (697, 1477),
    4: (770, 1209), 5: (770, 1336), 6: (770, 1477),
    7: (852, 1209), 8: (852, 1336), 9: (852, 1477),
    0: (941, 1336),
}  # fmt: skip
# Each hint is true for a subset of digits, so text alone narrows the label down but never pins it.
HINTS = {
    "odd": ("an odd number", "something odd", "a number that is not even"),
    "even": ("an even number", "something even", "a number divisible by two"),
    "small": ("a small number", "a number below five", "a low digit"),
    "large": ("a big number", "a number of five or more", "a high digit"),
}
TEMPLATES = ("It is {}.", "I think it shows {}.", "Looks like {} to me.", "The label is {}.", "Probably {}.")


def _split_digit_bitmaps(seed: int) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Split load_digits 70/30 per digit so that test images are never seen in training."""
    digits = load_digits()
    rng = np.random.default_rng(seed + 10_000)  # independent of the row stream
    train, test = {}, {}
    for d in range(10):
        imgs = digits.images[digits.target == d][rng.permutation(int((digits.target == d).sum()))]
        cut = int(round(0.7 * len(imgs)))
        train[d], test[d] = imgs[:cut], imgs[cut:]
    return train, test


def _render_image(bitmap: np.ndarray, rng: np.random.Generator) -> Image.Image:
    small = Image.fromarray((bitmap * (255 / 16)).astype(np.uint8))
    img = np.asarray(small.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR), dtype=np.float64)
    img = img + rng.normal(0, IMAGE_NOISE_STD, img.shape)
    y, x = rng.integers(0, IMAGE_SIZE - OCCLUDER + 1, size=2)
    img[y : y + OCCLUDER, x : x + OCCLUDER] = rng.uniform(0, 255)  # hides part of the stroke
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _render_audio(digit: int, rng: np.random.Generator) -> np.ndarray:
    n = int(rng.uniform(0.4, 0.8) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    shift = 1 + rng.uniform(-PITCH_JITTER, PITCH_JITTER)
    low, high = (f * shift for f in DTMF[digit])
    phases = rng.uniform(0, 2 * np.pi, size=2)
    tone = np.sin(2 * np.pi * low * t + phases[0]) + np.sin(2 * np.pi * high * t + phases[1])
    fade = min(n // 2, int(0.02 * SAMPLE_RATE))  # short fades avoid clicks
    env = np.ones(n)
    env[:fade] = np.linspace(0, 1, fade)
    env[n - fade :] = np.linspace(1, 0, fade)
    tone *= env * rng.uniform(0.3, 1.0)
    noise_power = np.mean(tone**2) / 10 ** (SNR_DB / 10)
    wav = tone + rng.normal(0, np.sqrt(noise_power), n)
    return (wav / max(1.0, np.abs(wav).max() / 0.99)).astype(np.float32)  # keep in [-1, 1] for PCM_16


def _make_text(digit: int, rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        kind = "even" if digit % 2 == 0 else "odd"
    else:
        kind = "small" if digit < 5 else "large"
    phrase = HINTS[kind][rng.integers(len(HINTS[kind]))]
    return TEMPLATES[rng.integers(len(TEMPLATES))].format(phrase)


def _write_wav(path: Path, wav: np.ndarray) -> None:
    # Encode in memory: libsndfile fsyncs real files on close, which makes 1,600 small writes slow.
    buf = io.BytesIO()
    sf.write(buf, wav, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    path.write_bytes(buf.getvalue())


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    with atomic_open(path, "w", newline="") as fh:
        df.to_csv(fh, index=False)


def _make_split(name: str, n: int, bitmaps: dict[int, np.ndarray], out: Path, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for i in range(n):
        digit = int(rng.integers(10))
        stem = f"{name}_{i:05d}"
        # One draw decides missingness so a row never lacks both text and image.
        u = rng.random()
        pool = bitmaps[digit]
        img = _render_image(pool[rng.integers(len(pool))], rng)
        image_rel: str | None = None
        if not 0.05 <= u < 0.10:
            image_rel = f"images/{stem}.png"
            img.save(out / image_rel)
        audio_rel = f"audio/{stem}.wav"
        _write_wav(out / audio_rel, _render_audio(digit, rng))
        text = _make_text(digit, rng)
        price = round(digit * 0.3 + rng.normal(0, 2.0), 2)
        color = COLORS[digit % 3] if rng.random() < 0.5 else COLORS[rng.integers(3)]
        rows.append(
            {
                "image": image_rel,
                "audio": audio_rel,
                "text": None if u < 0.05 else text,
                "price": float(price),
                "color": color,
                "digit": digit,
            }
        )
    return pd.DataFrame(rows, columns=["image", "audio", "text", "price", "color", "digit"])


def make_demo_data(out_dir: str | Path, n_train: int = 1200, n_test: int = 400, seed: int = 0) -> tuple[Path, Path]:
    """Write out_dir/train.csv, out_dir/test.csv, out_dir/images/*.png, out_dir/audio/*.wav.

    Returns the (train, test) csv paths; media paths inside the csvs are relative to out_dir.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    train_bitmaps, test_bitmaps = _split_digit_bitmaps(seed)
    rng = np.random.default_rng(seed)
    paths = []
    for name, n, bitmaps in (("train", n_train, train_bitmaps), ("test", n_test, test_bitmaps)):
        df = _make_split(name, n, bitmaps, out, rng)
        path = out / f"{name}.csv"
        _write_csv_atomic(df, path)
        paths.append(path)
    return paths[0], paths[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the offline polymodal demo dataset.")
    parser.add_argument("--out", default="demo_data", help="output folder")
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--n-test", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train_csv, test_csv = make_demo_data(args.out, args.n_train, args.n_test, args.seed)
    print(train_csv)
    print(test_csv)


if __name__ == "__main__":
    main()
