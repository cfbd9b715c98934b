"""Browser recordings (WebM/Ogg Opus, as MediaRecorder makes them) decoded server-side with PyAV; files of a kind
the server does not decode itself go through the engine's own path, with the same answers."""

import io
from types import SimpleNamespace

import av
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from test_serving import b64, fit_model, instance

from polymodal.data.media import decode_audio
from polymodal.data.schema import Modality, ProblemType, Schema
from polymodal.serving.inputs import InstanceChecker, RequestError
from polymodal.serving.recordings import container_of
from polymodal.serving.service import ModelService

LIMITS = SimpleNamespace(max_audio_seconds=2.0, max_text_chars=100, max_image_pixels=10_000)
CHECKER = InstanceChecker(Schema({"clip": Modality.AUDIO}, "y", ProblemType.MULTICLASS), LIMITS)


def opus(fmt: str, seconds: float, hz: float = 440.0, rate: int = 48_000) -> bytes:
    """A mono sine encoded as Opus in a WebM or Ogg container, like a browser's recording."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream("libopus", rate=rate)
        stream.layout = "mono"
        wave = (0.3 * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)).astype(np.float32)[None]
        for i in range(0, wave.shape[1], 960):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, i : i + 960]), format="flt", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["webm", "ogg"])
def test_a_recording_is_decoded_to_the_sound_it_holds(fmt):
    data = opus(fmt, 1.0)
    assert container_of(data) in ("matroska", "ogg")
    (row,) = CHECKER.check_all([{"clip": b64(data)}])
    wave = decode_audio(row["clip"], 8000)  # what the model's audio decoder then reads
    assert abs(len(wave) / 8000 - 1.0) < 0.1
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 8000 / len(wave) - 440) < 10  # the tone survives: it is the same sound


def test_a_recording_above_the_limit_is_413_without_decoding_it_all():
    with pytest.raises(RequestError) as e:
        CHECKER.check_all([{"clip": b64(opus("webm", 5.0))}])
    assert e.value.status == 413 and e.value.errors[0].limit == 2.0
    assert "longer than the limit of 2 seconds" in e.value.errors[0].message


@pytest.mark.parametrize(
    "data",
    [
        b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n",  # a playlist naming a local file
        b"ffconcat version 1.0\nfile '/etc/passwd'\n",
        b"\x1a\x45\xdf\xa3" + b"\0" * 64,  # a WebM header with nothing behind it
    ],
)
def test_what_is_not_a_readable_recording_is_422_and_never_probed(data):
    with pytest.raises(RequestError) as e:
        CHECKER.check_all([{"clip": b64(data)}])
    assert e.value.status == 422 and "not an audio file" in e.value.errors[0].message


def test_the_engine_path_for_other_file_kinds_answers_like_the_fast_path(tmp_path_factory):
    model, test = fit_model(tmp_path_factory)
    df = pd.read_csv(test).head(6)
    service = ModelService(model)
    config = SimpleNamespace(max_audio_seconds=60.0, max_text_chars=10_000, max_image_pixels=16_777_216)
    checker = InstanceChecker(service.schema, config)
    rows = [checker.check_all([instance(r, test.parent)]) for _, r in df.iterrows()]
    fast = service.run([service.decode(r) for r in rows])
    service.fast = False  # as for a column of a kind the server has no decoder for
    slow = service.run([service.decode(r) for r in rows])
    assert [p[0]["prediction"] for p in fast] == [p[0]["prediction"] for p in slow]
    for a, b in zip(fast, slow, strict=True):
        assert a[0]["probabilities"] == pytest.approx(b[0]["probabilities"], abs=1e-6)
    assert sf.info(io.BytesIO(rows[0][0]["clip"])).samplerate > 0
