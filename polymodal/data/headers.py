"""Headers of the two formats requests carry most, read with `struct`: a PNG's size and a RIFF/WAVE file's PCM
layout (and its samples, with numpy). Anything else, or anything these do not fully recognise, returns None and
goes to Pillow / libsndfile as before.

Why: a served request used to open each picture twice with Pillow (limit check, then decoding) and each clip twice
with libsndfile. After the server idles (10 req/s), such Python-heavy library calls ran 10-20x slower than back to
back on this VM (a Pillow header read 0.23 ms instead of 0.012), so the fewer of them a request makes, the better.
Samples read here equal libsndfile's (its float normalisation: int16 / 2^15, int32 / 2^31, (uint8 - 128) / 2^7).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
# (format, bits per sample) -> (numpy dtype, scale to [-1, 1], offset)
_LAYOUTS = {
    (_PCM, 8): (np.dtype("u1"), 1 / 2**7, 128),
    (_PCM, 16): (np.dtype("<i2"), 1 / 2**15, 0),
    (_PCM, 32): (np.dtype("<i4"), 1 / 2**31, 0),
    (_FLOAT, 32): (np.dtype("<f4"), 1.0, 0),
    (_FLOAT, 64): (np.dtype("<f8"), 1.0, 0),
}


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None if `data` does not start like a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


@dataclass(frozen=True)
class WavLayout:
    sample_rate: int
    channels: int
    frames: int  # whole frames present in the data chunk (a truncated file: what is there)
    fmt: int
    bits: int
    data_offset: int


def wav_layout(data: bytes) -> WavLayout | None:
    """The layout of a RIFF/WAVE file with PCM 8/16/32-bit or float 32/64-bit samples, or None."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if cid == b"fmt ":
            if size < 16 or body + size > len(data):
                return None
            tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", data[body : body + 16])
            if tag == _EXTENSIBLE:  # the real format is the first two bytes of the sub-format GUID
                if size < 40:
                    return None
                tag = struct.unpack("<H", data[body + 24 : body + 26])[0]
            fmt = (tag, channels, rate, align, bits)
        elif cid == b"data":
            if fmt is None:
                return None
            tag, channels, rate, align, bits = fmt
            if (tag, bits) not in _LAYOUTS or channels < 1 or rate < 1 or align != channels * bits // 8:
                return None
            available = min(size, len(data) - body)  # a streamed header may claim more than was written
            return WavLayout(rate, channels, available // align, tag, bits, body)
        pos = body + size + (size & 1)  # chunks are padded to an even size
    return None


def read_wav(data: bytes, layout: WavLayout, max_frames: int | None = None) -> np.ndarray:
    """The samples as float32, shape (frames, channels), scaled like libsndfile's float reads."""
    dtype, scale, offset = _LAYOUTS[(layout.fmt, layout.bits)]
    frames = layout.frames if max_frames is None else min(layout.frames, max_frames)
    x = np.frombuffer(data, dtype=dtype, count=frames * layout.channels, offset=layout.data_offset)
    x = x.astype(np.float32)  # a copy: frombuffer's array is read-only
    if offset:
        x -= offset
    if scale != 1.0:
        x *= np.float32(scale)
    return x.reshape(frames, layout.channels)
