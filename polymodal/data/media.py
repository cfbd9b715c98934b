"""Decoding image and audio files into arrays, with guards against hostile or broken files.

Each decoder raises `MediaError` with a short reason; callers turn it into a row-level problem.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from polymodal.config import IMAGE_FITS

# Refuse images above this many pixels before decoding them (decompression bombs).
MAX_IMAGE_PIXELS = 64_000_000
# Refuse to read more than this much audio; longer clips are cut anyway by the preprocessing.
MAX_AUDIO_SECONDS = 600.0


class MediaError(ValueError):
    pass


def _open_source(source: str | os.PathLike[str] | bytes):
    if isinstance(source, bytes | bytearray):
        return io.BytesIO(source)
    path = Path(source)
    if not path.exists():
        raise MediaError(f"file not found: {path}")
    if path.stat().st_size == 0:
        raise MediaError(f"file is empty: {path}")
    return path


PAD_GRAY = 128  # letterbox bars: mid-grey, about zero after any usual pixel normalization


def decode_image(
    source: str | os.PathLike[str] | bytes, size: int, max_pixels: int | None = None, fit: str = "squash"
) -> np.ndarray:
    """Decode to an RGB uint8 array of shape (3, size, size). `fit`: "squash" resizes to the square whatever
    the aspect ratio; "pad" keeps the aspect ratio and letterboxes the picture, centred, on mid-grey bars."""
    if fit not in IMAGE_FITS:
        raise ValueError(f"image fit must be one of {IMAGE_FITS}, not {fit!r}")
    from PIL import Image, ImageOps, UnidentifiedImageError

    max_pixels = max_pixels or MAX_IMAGE_PIXELS
    src = _open_source(source)
    try:
        with Image.open(src) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise MediaError(f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels}")
            im = ImageOps.exif_transpose(im)
            im = im.convert("RGB")
            if fit == "pad":
                scale = size / max(w, h)
                inner = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
                im = Image.new("RGB", (size, size), (PAD_GRAY,) * 3)
                im.paste(inner, ((size - inner.width) // 2, (size - inner.height) // 2))
            else:
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except MediaError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise MediaError(f"unreadable or corrupt image ({type(e).__name__}: {e})") from e
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def decode_audio(
    source: str | os.PathLike[str] | bytes, sample_rate: int, max_seconds: float = MAX_AUDIO_SECONDS
) -> np.ndarray:
    """Decode to a mono float32 waveform at `sample_rate`."""
    import soundfile as sf

    src = _open_source(source)
    try:
        with sf.SoundFile(src) as f:
            sr = f.samplerate
            frames = min(f.frames, int(max_seconds * sr)) if f.frames > 0 else -1
            wav = f.read(frames=frames, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, OSError, ValueError) as e:
        raise MediaError(f"unreadable or corrupt audio ({type(e).__name__}: {e})") from e
    if wav.size == 0:
        raise MediaError("audio has no samples")
    wav = wav.mean(axis=1)
    if not np.all(np.isfinite(wav)):
        raise MediaError("audio contains NaN or infinite samples")
    if sr != sample_rate:
        import librosa

        wav = librosa.resample(wav, orig_sr=sr, target_sr=sample_rate)
    return wav.astype(np.float32, copy=False)
