"""Faces in pictures: found with the Haar cascades that ship inside OpenCV, blurred or boxed. Every picture written
is re-encoded from its pixels alone, so EXIF, GPS, XMP, ICC profiles and text chunks never reach the copy."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.errors import UserError

FACE_MODES = ("blur", "box", "keep")
# Frontal faces (two cascades, for recall) and profiles; a face found by any of them is covered.
CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_frontalface_alt2.xml", "haarcascade_profileface.xml")
MARGIN = 0.15  # grow each box by this fraction on every side: hair, ears and chin identify people too


@lru_cache(maxsize=1)
def cascades() -> list[Any]:
    """The face detectors, loaded once (call it before starting threads: the first import of cv2 is not
    thread-safe)."""
    import cv2
    import cv2.data

    out = []
    for name in CASCADES:
        c = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, name))
        if c.empty():
            raise RuntimeError(f"OpenCV's cascade {name} did not load from {cv2.data.haarcascades}")
        out.append(c)
    return out


def find_faces(rgb: np.ndarray, min_size: int = 24) -> list[tuple[int, int, int, int]]:
    """Face boxes (x, y, w, h) in an RGB uint8 picture (height, width, 3)."""
    import cv2

    gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    boxes: list[tuple[int, int, int, int]] = []
    for cascade in cascades():
        found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_size, min_size))
        boxes += [tuple(int(v) for v in b) for b in (found if len(found) else [])]
    return boxes


def cover_faces(rgb: np.ndarray, mode: str = "blur") -> tuple[np.ndarray, int]:
    """The picture with every face blurred beyond recognition (or filled black), and how many faces were found."""
    if mode not in FACE_MODES:
        raise UserError(f"unknown face mode {mode!r}; choose one of {list(FACE_MODES)}")
    if mode == "keep":
        return rgb, 0
    import cv2

    boxes = find_faces(rgb)
    out = rgb.copy()
    h, w = rgb.shape[:2]
    for x, y, bw, bh in boxes:
        dx, dy = int(bw * MARGIN), int(bh * MARGIN)
        x0, y0, x1, y1 = max(0, x - dx), max(0, y - dy), min(w, x + bw + dx), min(h, y + bh + dy)
        if mode == "box":
            out[y0:y1, x0:x1] = 0
            continue
        # Pixelate to an 8x8 mosaic, then blur it: a plain Gaussian blur of a small kernel can be partly undone.
        region = out[y0:y1, x0:x1]
        small = cv2.resize(region, (8, 8), interpolation=cv2.INTER_AREA)
        mosaic = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
        k = max(3, (min(x1 - x0, y1 - y0) // 4) | 1)
        out[y0:y1, x0:x1] = cv2.GaussianBlur(mosaic, (k, k), 0)
    return out, len(boxes)


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a picture to RGB uint8, turned upright by its EXIF orientation (the tag itself is then dropped)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8).copy()


def write_png(rgb: np.ndarray, path: Path) -> None:
    """Pixels only: a new PNG image made from the array, with no metadata of any kind."""
    from PIL import Image

    Image.fromarray(rgb, mode="RGB").save(path, format="PNG", optimize=False)


def anonymize_image(source: str | os.PathLike[str], target: Path, mode: str = "blur") -> int:
    """Write `source` to `target` (PNG) with its faces covered and no metadata; returns the number of faces."""
    rgb, n = cover_faces(read_rgb(source), mode)
    write_png(rgb, target)
    return n
