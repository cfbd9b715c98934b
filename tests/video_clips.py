"""Tiny generated video clips for the tests (PyAV): frames whose index is drawn into the picture, with or without a
sound track, plus broken files (corrupt, no video stream, a codec FFmpeg does not know)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

SIZE = 16


def frame_picture(i: int, size: int = SIZE, level: int | None = None) -> np.ndarray:
    """Frame i: a white bar at column i (so its index can be read back) on a grey level."""
    f = np.full((size, size, 3), 40 if level is None else level, np.uint8)
    f[:, i % size] = 255
    return f


def write_clip(path: Path, n: int = 8, fps: int = 4, sound: bool = True, sr: int = 16000, level: int | None = None,
               tone: float = 440.0, container: str | None = None, codec: str = "libx264") -> Path:  # fmt: skip
    """An n-frame clip at `fps` (n / fps seconds), with an AAC sound track of a sine at `tone` Hz if `sound`."""
    import av

    with av.open(str(path), "w", format=container) as box:
        vs = box.add_stream(codec, rate=fps)
        vs.width = vs.height = SIZE
        vs.pix_fmt = "yuv420p"
        if sound:
            aus = box.add_stream("aac", rate=sr)
            aus.layout = "mono"
        for i in range(n):
            for p in vs.encode(av.VideoFrame.from_ndarray(frame_picture(i, level=level), format="rgb24")):
                box.mux(p)
        for p in vs.encode():
            box.mux(p)
        if sound:
            t = np.arange(int(n / fps * sr)) / sr
            audio = (0.3 * np.sin(2 * np.pi * tone * t)).astype(np.float32)
            for pts in range(0, len(audio), 1024):
                fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, pts : pts + 1024]), format="fltp",
                                                layout="mono")  # fmt: skip
                fr.sample_rate, fr.pts, fr.time_base = sr, pts, Fraction(1, sr)
                for p in aus.encode(fr):
                    box.mux(p)
            for p in aus.encode():
                box.mux(p)
    return path


def write_sound_only(path: Path, sr: int = 16000) -> Path:
    """A Matroska file with an audio stream and no video stream."""
    import av

    with av.open(str(path), "w", format="matroska") as box:
        aus = box.add_stream("aac", rate=sr)
        aus.layout = "mono"
        audio = np.zeros((1, sr // 2), np.float32)
        for pts in range(0, audio.shape[1], 1024):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, pts : pts + 1024]), format="fltp",
                                            layout="mono")  # fmt: skip
            fr.sample_rate, fr.pts, fr.time_base = sr, pts, Fraction(1, sr)
            for p in aus.encode(fr):
                box.mux(p)
        for p in aus.encode():
            box.mux(p)
    return path


def write_codecless(path: Path) -> Path:
    """A Matroska video whose codec id is one FFmpeg does not know (the H.264 id renamed in the header)."""
    tmp = write_clip(path.with_suffix(".tmp.mkv"), container="matroska", sound=False)
    data = tmp.read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    path.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/AVC"))
    tmp.unlink()
    return path
