"""Decoding video files with PyAV, in one pass per file: frames sampled over the clip and its sound track.

`decode_video` reads the container's headers first and refuses, before decoding a pixel, a file that is not a
video, has no video stream, an unsupported codec, or is too long or too large (frames x pixels: the video's
decompression bomb). Then one demuxing pass decodes the video stream and the audio stream together: the frames
nearest to N sample times (uniform over the clip, or at a rate) are kept, resized like images, and the sound
track is resampled to mono at the audio pipeline's rate and cut or padded to the clip's duration (AAC pads its
last frame to 1024 samples). A file without an audio stream is a clip without sound (`Clip.sound` None): the
sound input of that row is absent, which is data, not an error.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polymodal.config import IMAGE_FITS
from polymodal.data.media import PAD_GRAY, MediaError, check_file

MAX_VIDEO_SECONDS = 600.0
# Frames x width x height of the whole clip at its own size: above it, decoding could take minutes and gigabytes.
MAX_VIDEO_PIXELS = 2_000_000_000


@dataclass
class Clip:
    frames: np.ndarray  # (n_frames, 3, size, size) uint8
    sound: np.ndarray | None  # mono float32 at the sample rate, as long as the clip; None: no audio stream
    seconds: float  # the clip's duration
    times: np.ndarray  # the time (s) of each kept frame


def _where(source: str | os.PathLike[str] | bytes) -> str:
    return "uploaded bytes" if isinstance(source, bytes | bytearray) else str(source)


def sample_times(seconds: float, n_frames: int, fps: float | None = None) -> np.ndarray:
    """When the kept frames are taken: the centres of `n_frames` equal parts of the clip, or every 1 / fps s from
    the start (a clip shorter than n_frames / fps keeps its last frame for the times past its end)."""
    if fps:
        return np.arange(n_frames) / float(fps)
    return (np.arange(n_frames) + 0.5) * seconds / n_frames


def _picture(frame, size: int, fit: str) -> np.ndarray:
    """An `av.VideoFrame` -> (3, size, size) uint8, squashed to the square or letterboxed like `decode_image`."""
    if fit == "squash":
        rgb = frame.reformat(width=size, height=size, format="rgb24").to_ndarray()
    else:
        from PIL import Image

        im = frame.to_image()
        scale = size / max(im.width, im.height)
        inner = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
        canvas = Image.new("RGB", (size, size), (PAD_GRAY,) * 3)
        canvas.paste(inner, ((size - inner.width) // 2, (size - inner.height) // 2))
        rgb = np.asarray(canvas, dtype=np.uint8)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def _duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def decode_video(
    source: str | os.PathLike[str] | bytes,
    n_frames: int,
    size: int,
    sample_rate: int,
    fit: str = "squash",
    fps: float | None = None,
    max_seconds: float = MAX_VIDEO_SECONDS,
    max_pixels: int = MAX_VIDEO_PIXELS,
) -> Clip:
    """Decode `n_frames` frames and the sound track of a video file (or its bytes) in one pass."""
    import av

    if fit not in IMAGE_FITS:
        raise MediaError(f"image fit must be one of {IMAGE_FITS}, not {fit!r}")
    where = _where(source)
    if isinstance(source, bytes | bytearray):
        src = io.BytesIO(source)
    else:
        check_file(Path(source))
        src = str(source)
    try:
        container = av.open(src, metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"unreadable or corrupt video ({type(e).__name__}: {e}): {where}") from e
    with container:
        if not container.streams.video:
            raise MediaError(f"no video stream (a video file needs pictures; for sound alone use an audio column): "
                             f"{where}")  # fmt: skip
        video = container.streams.video[0]
        if video.codec_context is None:
            raise MediaError(f"unsupported video codec ({video.codec_context or 'no decoder for it'}): {where}")
        audio = container.streams.audio[0] if container.streams.audio else None
        if audio is not None and audio.codec_context is None:
            audio = None  # a sound track this FFmpeg cannot decode: treated as no sound, the frames still count
        seconds = _duration(container, video)
        if seconds is not None and seconds > max_seconds:
            raise MediaError(f"video too long: {seconds:.1f} s, limit {max_seconds:g} s: {where}")
        rate = float(video.average_rate or video.guessed_rate or 30)
        w, h = video.codec_context.width, video.codec_context.height
        expected = (seconds or max_seconds) * rate * w * h
        if expected > max_pixels:
            raise MediaError(f"video too large: about {round((seconds or max_seconds) * rate)} frames of {w} x {h} = "
                             f"{int(expected)} pixels, limit {max_pixels}: {where}")  # fmt: skip
        return _one_pass(container, video, audio, n_frames, size, sample_rate, fit, fps, seconds, rate, max_pixels,
                         where)  # fmt: skip


def _one_pass(container, video, audio, n_frames, size, sample_rate, fit, fps, seconds, rate, max_pixels, where):
    import av

    # Until the header's duration is checked against the frames, sample on the header's duration (or 1 s).
    targets = sample_times(seconds or 1.0, n_frames, fps)
    kept: list[np.ndarray] = []
    times: list[float] = []
    prev = None  # (time, frame) of the last decoded frame not yet passed by every target
    pixels = 0
    chunks: list[np.ndarray] = []
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate) if audio is not None else None
    last_time = 0.0
    streams = [video] + ([audio] if audio is not None else [])
    try:
        for frame in container.decode(*streams):
            if isinstance(frame, av.AudioFrame):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                continue
            t = float(frame.time if frame.time is not None else len(times) / rate)
            pixels += frame.width * frame.height
            if pixels > max_pixels:  # the header lied about the length or size
                raise MediaError(f"video too large: more than {max_pixels} pixels decoded, limit {max_pixels}: "
                                 f"{where}")  # fmt: skip
            last_time = max(last_time, t)
            while len(kept) < n_frames and targets[len(kept)] < t:
                target = targets[len(kept)]
                use = prev if prev is not None and abs(prev[0] - target) <= abs(t - target) else (t, frame)
                kept.append(_picture(use[1], size, fit))
                times.append(use[0])
            prev = (t, frame)
        if resampler is not None:
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"unreadable or corrupt video ({type(e).__name__}: {e}): {where}") from e
    if prev is None:
        raise MediaError(f"video has no decodable frame: {where}")
    while len(kept) < n_frames:  # targets past the last frame: the last frame
        kept.append(_picture(prev[1], size, fit))
        times.append(prev[0])
    duration = seconds if seconds else last_time + 1.0 / rate
    sound = None
    if audio is not None:
        wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        n = int(round(duration * sample_rate))
        sound = np.zeros(n, np.float32)
        sound[: min(n, len(wave))] = wave[:n]
        if not np.all(np.isfinite(sound)):
            raise MediaError(f"the video's sound track contains NaN or infinite samples: {where}")
    return Clip(np.stack(kept), sound, float(duration), np.asarray(times))


def video_seconds(source: str | os.PathLike[str]) -> float | None:
    """A video file's duration from its headers (no decoding); None when they do not say or it does not open."""
    import av

    try:
        with av.open(str(source), metadata_errors="ignore") as c:
            return _duration(c, c.streams.video[0]) if c.streams.video else None
    except Exception:  # noqa: BLE001 - a broken file is reported by validation, not here
        return None
