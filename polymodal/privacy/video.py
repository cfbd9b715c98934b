"""Anonymizing a video file: faces blurred in every frame (privacy/image.py), the voice of its sound track changed
(privacy/audio.py, McAdams), re-encoded as a new MP4 (H.264 + AAC) that carries none of the source's metadata."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from polymodal.privacy.audio import mcadams
from polymodal.privacy.image import cover_faces

MAX_FRAMES = 20_000  # a longer video is refused rather than re-encoded for minutes


def anonymize_video(source: str | os.PathLike[str], target: Path, faces: str = "blur",
                    alpha: float | None = None) -> int:  # fmt: skip
    """Write the anonymized copy of `source` to `target`; returns how many faces were covered over all frames.
    `alpha`: the McAdams coefficient of the voice change (None: the sound track is copied as decoded)."""
    import av

    frames: list[np.ndarray] = []
    chunks: list[np.ndarray] = []
    with av.open(str(source), metadata_errors="ignore") as box:
        if not box.streams.video:
            raise ValueError("no video stream")
        video = box.streams.video[0]
        rate = video.average_rate or Fraction(25)
        audio = box.streams.audio[0] if box.streams.audio else None
        sr = audio.codec_context.sample_rate if audio is not None else 16000
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr) if audio is not None else None
        for frame in box.decode(*([video] + ([audio] if audio is not None else []))):
            if isinstance(frame, av.AudioFrame):
                chunks += [o.to_ndarray().reshape(-1) for o in resampler.resample(frame)]
                continue
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) > MAX_FRAMES:
                raise ValueError(f"more than {MAX_FRAMES} frames")
    if not frames:
        raise ValueError("no decodable frame")
    found = 0
    for i, rgb in enumerate(frames):
        frames[i], n = cover_faces(rgb, faces)
        found += n
    wave = np.concatenate(chunks) if chunks else None
    if wave is not None and alpha is not None:
        wave = mcadams(wave, sr, alpha).astype(np.float32)
    h, w = frames[0].shape[:2]
    with av.open(str(target), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = w - w % 2, h - h % 2, "yuv420p"  # H.264 4:2:0 needs even sides
        aus = None
        if wave is not None:
            aus = out.add_stream("aac", rate=sr)
            aus.layout = "mono"
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: vs.height, : vs.width]), format="rgb24")
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        if aus is not None:
            for pts in range(0, len(wave), 1024):
                fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[None, pts : pts + 1024]), format="fltp",
                                                layout="mono")  # fmt: skip
                fr.sample_rate, fr.pts, fr.time_base = sr, pts, Fraction(1, sr)
                out.mux(aus.encode(fr))
            out.mux(aus.encode())
    return found
