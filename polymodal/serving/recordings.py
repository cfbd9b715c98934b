"""Browser recordings: MediaRecorder gives WebM/Opus (Chromium), Ogg/Opus (Firefox) or MP4/AAC (Safari). What
libsndfile cannot read is decoded here with PyAV (FFmpeg) and passed on as a WAV file, which every audio column's
decoder reads, so a recording is preprocessed exactly like an uploaded file.

Only these containers are opened, chosen from the file's first bytes, never by FFmpeg's probing: a playlist or
concat format could name other files or URLs, and a request may never make the server open anything.
"""

from __future__ import annotations

import io

import numpy as np

# magic bytes -> the FFmpeg demuxer that reads them
CONTAINERS = ((b"\x1a\x45\xdf\xa3", "matroska"), (b"OggS", "ogg"))
MP4_BRAND_AT = 4  # ISO base media files have "ftyp" at byte 4


class NotARecording(Exception):
    """Not a container this module decodes, or its audio does not decode."""


class RecordingTooLong(Exception):
    def __init__(self, seconds: float):
        super().__init__(f"{seconds:.1f} s")
        self.seconds = seconds


def container_of(data: bytes) -> str | None:
    for magic, name in CONTAINERS:
        if data.startswith(magic):
            return name
    if data[MP4_BRAND_AT : MP4_BRAND_AT + 4] == b"ftyp":
        return "mp4"
    return None


def to_wav(data: bytes, max_seconds: float) -> bytes:
    """The first audio stream of a WebM / Ogg / MP4 recording as a mono float WAV at its own rate. Decoding stops
    as soon as the clip passes `max_seconds` (Opus compresses silence so well that a small file can hold hours)."""
    fmt = container_of(data)
    if fmt is None:
        raise NotARecording("not a WebM, Ogg or MP4 file")
    try:
        import av
    except ImportError as e:  # PyAV is in the serve extra; without it, WAV/FLAC/OGG files still work
        raise NotARecording("PyAV is not installed") from e
    import soundfile as sf

    chunks: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data), mode="r", format=fmt) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise NotARecording("no audio stream")
            rate = int(stream.rate or stream.codec_context.sample_rate or 48_000)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            limit, n = int(max_seconds * rate), 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    n += chunks[-1].size
                if n > limit:
                    raise RecordingTooLong(n / rate)
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except (NotARecording, RecordingTooLong):
        raise
    except Exception as e:  # whatever FFmpeg says about a broken file
        raise NotARecording(f"{type(e).__name__}: {e}") from e
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if not wave.size:
        raise NotARecording("no samples")
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()
