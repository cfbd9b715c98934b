"""A tiny relational VQA table for the token-fusion tests: a red and a blue blob at random places, and the
question "is the red thing left of the blue thing?" or "is the blue thing left of the red thing?" (yes/no).

The answer needs where the blobs are *and* which words ask: each alone is at chance (50 %).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SIZE = 16


def make_blobs(folder: Path, n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        while True:
            (rx, ry), (bx, by) = rng.integers(1, SIZE - 3, size=(2, 2))
            if abs(int(rx) - int(bx)) >= 3:
                break
        pix = np.full((SIZE, SIZE, 3), 255, dtype=np.uint8)
        pix[ry : ry + 2, rx : rx + 2] = (255, 0, 0)
        pix[by : by + 2, bx : bx + 2] = (0, 0, 255)
        Image.fromarray(pix).save(folder / "img" / f"{seed}_{i}.png")
        first, second = ("red", "blue") if rng.integers(2) else ("blue", "red")
        red_left = rx < bx
        answer = "yes" if red_left == (first == "red") else "no"
        kind = "red first" if first == "red" else "blue first"
        rows.append(
            {"image": f"img/{seed}_{i}.png", "question": f"is the {first} thing left of the {second} thing",
             "answer": answer, "kind": kind}
        )  # fmt: skip
    return pd.DataFrame(rows)
