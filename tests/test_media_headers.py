"""Headers read with struct (data/headers.py): a PNG's size, and a WAV's samples equal to libsndfile's for every
layout it accepts; what it does not recognise goes to Pillow / libsndfile, with the same result."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from polymodal.data.headers import png_size, read_wav, wav_layout
from polymodal.data.media import decode_audio


def wav_bytes(x: np.ndarray, rate: int, subtype: str, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, subtype=subtype, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def signal() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(3001) / 8000
    x = 0.6 * np.sin(2 * np.pi * 440 * t)[:, None] + 0.2 * rng.standard_normal((3001, 2))
    return np.clip(x, -1, 1)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_32", "PCM_U8", "FLOAT", "DOUBLE"])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("fmt", ["WAV", "WAVEX"])
def test_wav_samples_equal_libsndfile(signal, subtype, channels, fmt, monkeypatch):
    data = wav_bytes(signal[:, :channels], 8000, subtype, fmt)
    layout = wav_layout(data)
    assert layout is not None and (layout.sample_rate, layout.channels, layout.frames) == (8000, channels, 3001)
    want = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)[0]
    got = read_wav(data, layout)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.array_equal(read_wav(data, layout, max_frames=100), want[:100])
    # decode_audio on the bytes (this path) equals decode_audio through libsndfile, resampled or not.
    for rate in (8000, 16000):
        by_value = decode_audio(data, rate)
        with monkeypatch.context() as m:
            m.setattr("polymodal.data.headers.wav_layout", lambda _: None)  # force the libsndfile path
            np.testing.assert_array_equal(by_value, decode_audio(data, rate))


def test_what_it_does_not_read_goes_to_libsndfile(signal):
    pcm24 = wav_bytes(signal, 8000, "PCM_24")
    assert wav_layout(pcm24) is None  # 24-bit: left to libsndfile, which reads it
    assert decode_audio(pcm24, 8000).shape == (3001,)
    flac = wav_bytes(signal, 8000, "PCM_16", "FLAC")
    assert wav_layout(flac) is None and decode_audio(flac, 8000).shape == (3001,)
    for junk in (b"", b"RIFF", b"RIFF....WAVEfmt garbage", b"RIFF\x10\x00\x00\x00WAVEdata\x04\x00\x00\x00abcd"):
        assert wav_layout(junk) is None, junk  # no fmt chunk before the data: not guessed
    # A header that claims more data than was written (a cut upload): the frames that are there.
    data = wav_bytes(signal[:, :1], 8000, "PCM_16")
    cut = data[: len(data) - 1001]
    layout = wav_layout(cut)
    assert layout is not None and layout.frames == 3001 - 501  # 1001 bytes = 500.5 frames: the half frame dropped
    want = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)[0][: layout.frames]
    assert np.array_equal(read_wav(cut, layout), want)


def test_png_size_is_the_header_pillow_reads():
    for w, h in ((1, 1), (37, 5), (300, 2000)):
        buf = io.BytesIO()
        Image.new("RGB", (w, h)).save(buf, format="PNG")
        assert png_size(buf.getvalue()) == (w, h) == Image.open(io.BytesIO(buf.getvalue())).size
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="JPEG")
    assert png_size(buf.getvalue()) is None and png_size(b"\x89PNG\r\n\x1a\n") is None


def test_png_orientation_is_applied_by_value_as_from_a_file(tmp_path):
    """The EXIF step is skipped only for a PNG without an eXIf chunk: one with an orientation tag is still turned,
    by value as from a file."""
    from polymodal.data.media import decode_image

    rgb = np.zeros((6, 10, 3), np.uint8)
    rgb[:2, :3] = 255  # a mark in the top-left corner, so a turn shows
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    for name, kwargs in (("plain.png", {}), ("turned.png", {"exif": exif.tobytes()})):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG", **kwargs)
        (tmp_path / name).write_bytes(buf.getvalue())
        by_value, from_file = decode_image(buf.getvalue(), 16), decode_image(tmp_path / name, 16)
        assert np.array_equal(by_value, from_file), name
    plain, turned = decode_image(tmp_path / "plain.png", 16), decode_image(tmp_path / "turned.png", 16)
    assert plain[0, 0, 0] > 200 and turned[0, 0, 0] < 50 and turned[0, 0, -1] > 200  # the mark moved top right
