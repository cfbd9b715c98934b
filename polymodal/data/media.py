"""Decoding image and audio files into arrays, with guards against hostile or broken files.

Each decoder raises `MediaError` with a short reason; callers turn it into a row-level problem.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from polymodal.config import IMAGE_FITS
from polymodal.errors import UserError

# Refuse images above this many pixels before decoding them (decompression bombs).
MAX_IMAGE_PIXELS = 64_000_000
# Refuse to read more than this much audio; longer clips are cut anyway by the preprocessing.
MAX_AUDIO_SECONDS = 600.0


class MediaError(UserError):
    """A media file that cannot be used: missing, empty, too large or unreadable. The message names the file."""


def check_file(path: Path) -> None:
    """Raise MediaError, naming the file, if it is missing or empty (what a stat can tell without decoding)."""
    try:
        size = path.stat().st_size
    except (FileNotFoundError, NotADirectoryError):
        raise MediaError(f"file not found: {path}") from None  # the path is what the user needs to fix it
    if size == 0:
        raise MediaError(f"file is empty: {path}")


def _open_source(source: str | os.PathLike[str] | bytes):
    if isinstance(source, bytes | bytearray):
        return io.BytesIO(source)
    path = Path(source)
    check_file(path)
    return path


PAD_GRAY = 128  # letterbox bars: mid-grey, about zero after any usual pixel normalization


def _where(source: str | os.PathLike[str] | bytes) -> str:
    """How an error names the file: its path, or that it came as bytes (an upload)."""
    return "uploaded bytes" if isinstance(source, bytes | bytearray) else str(source)


def image_header_size(source: str | os.PathLike[str] | bytes, formats: tuple[str, ...] | None = None):
    """(width, height) read from the image's header without decoding it, or None if no format recognises it.

    For pictures Pillow refuses to open (its decompression-bomb limit fires inside `Image.open`, before the size
    reaches the caller): the same format plugins `Image.open` tries, without the size check."""
    from PIL import Image

    Image.init()
    data = bytes(source) if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
    fp = io.BytesIO(data)
    prefix = data[:16]
    for name in formats or tuple(Image.ID):
        factory, accept = Image.OPEN.get(name.upper(), (None, None))
        if factory is None or (accept is not None and accept(prefix) is not True):
            continue
        try:
            fp.seek(0)
            return factory(fp, "").size
        except Exception:  # noqa: BLE001 - not this format; try the next like Image.open does
            continue
    return None


def too_large(w: int, h: int, limit: int) -> str:
    return f"image too large: {w} x {h} = {w * h} pixels, limit {limit}"


def decode_image(
    source: str | os.PathLike[str] | bytes, size: int, max_pixels: int | None = None, fit: str = "squash"
) -> np.ndarray:
    """Decode to an RGB uint8 array of shape (3, size, size). `fit`: "squash" resizes to the square whatever
    the aspect ratio; "pad" keeps the aspect ratio and letterboxes the picture, centred, on mid-grey bars.

    A picture above `max_pixels` is refused from its header, before any pixel is decoded, at any size: also above
    Pillow's own decompression-bomb limit (which fires inside `Image.open`, so its size is read again here)."""
    if fit not in IMAGE_FITS:
        raise UserError(f"image fit must be one of {IMAGE_FITS}, not {fit!r}")
    from PIL import Image, ImageOps, UnidentifiedImageError

    max_pixels = max_pixels or MAX_IMAGE_PIXELS
    src = _open_source(source)
    where = _where(source)
    try:
        with Image.open(src) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise MediaError(f"{too_large(w, h, max_pixels)}: {where}")
            if not _png_without_exif(source):  # (its orientation tag, if any, is in an eXIf chunk)
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
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # The warning is an exception here only where the user's warning filters turn it into one.
        wh = image_header_size(source)
        reason = too_large(*wh, max_pixels) if wh else f"image too large ({e}), limit {max_pixels} pixels"
        raise MediaError(f"{reason}: {where}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"unreadable or corrupt image ({type(e).__name__}: {e}): {where}") from e
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _png_without_exif(source: str | os.PathLike[str] | bytes) -> bool:
    """A PNG sent by value with no eXIf chunk has nothing to transpose: skip Pillow's EXIF parsing, which after
    the server idles was the slowest step of decoding a small picture. (The chunk type's bytes in the compressed
    data by chance only mean the check runs.)"""
    from polymodal.data.headers import PNG_SIGNATURE

    return isinstance(source, bytes) and source.startswith(PNG_SIGNATURE) and b"eXIf" not in source


def decode_audio(
    source: str | os.PathLike[str] | bytes, sample_rate: int, max_seconds: float = MAX_AUDIO_SECONDS
) -> np.ndarray:
    """Decode to a mono float32 waveform at `sample_rate`."""
    import soundfile as sf

    from polymodal.data.headers import read_wav, wav_layout

    layout = wav_layout(source) if isinstance(source, bytes) else None
    src = None if layout else _open_source(source)
    try:
        if layout:  # a plain PCM/float WAV sent by value: its samples as they are, without libsndfile
            sr = layout.sample_rate
            wav = read_wav(source, layout, int(max_seconds * sr))
        else:
            with sf.SoundFile(src) as f:
                sr = f.samplerate
                frames = min(f.frames, int(max_seconds * sr)) if f.frames > 0 else -1
                wav = f.read(frames=frames, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, OSError, ValueError) as e:
        raise MediaError(f"unreadable or corrupt audio ({type(e).__name__}: {e}): {_where(source)}") from e
    if wav.size == 0:
        raise MediaError(f"audio has no samples: {_where(source)}")
    wav = wav.mean(axis=1)
    if not np.all(np.isfinite(wav)):
        raise MediaError(f"audio contains NaN or infinite samples: {_where(source)}")
    if sr != sample_rate:
        import librosa

        wav = librosa.resample(wav, orig_sr=sr, target_sr=sample_rate)
    return wav.astype(np.float32, copy=False)
