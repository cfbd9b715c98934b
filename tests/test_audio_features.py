"""The fast paths of the scratch pipeline give the values of the plain ones: numpy audio features equal librosa's,
and the channels-last CNNs equal the default memory layout (outputs and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polymodal.config import PreprocessConfig
from polymodal.encoders.scratch import AudioCNN, ImageCNN
from polymodal.preprocess.audio import log_mel_mfcc


def librosa_features(waves: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """The features as librosa's own calls compute them (what polymodal used before, and what models were fitted
    on)."""
    import librosa

    hop = cfg.sample_rate // 100
    n_fft = 1 << int(np.ceil(np.log2(cfg.sample_rate * 0.025)))
    mel = librosa.feature.melspectrogram(
        y=waves, sr=cfg.sample_rate, n_fft=n_fft, hop_length=hop, n_mels=cfg.n_mels, power=2.0
    )
    peak = np.maximum(mel.max(axis=(-2, -1), keepdims=True), 1e-10)
    log_mel = np.maximum(10.0 * np.log10(np.maximum(mel, 1e-10) / peak), -80.0)
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=cfg.n_mfcc)
    return np.concatenate([log_mel, mfcc], axis=-2).astype(np.float32)


@pytest.mark.parametrize("rate, n_samples", [(8000, 2000), (16000, 12345), (22050, 4410)])
def test_log_mel_mfcc_equals_librosa(rate: int, n_samples: int) -> None:
    rng = np.random.default_rng(rate)
    t = np.arange(n_samples) / rate
    waves = np.stack([
        0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.normal(size=n_samples),
        0.8 * rng.normal(size=n_samples),
        np.zeros(n_samples),  # silence
        np.concatenate([0.5 * np.sin(2 * np.pi * 220 * t[: n_samples // 3]), np.zeros(n_samples - n_samples // 3)]),
    ]).astype(np.float32)  # fmt: skip
    cfg = PreprocessConfig(sample_rate=rate)
    ours, ref = log_mel_mfcc(waves, cfg), librosa_features(waves, cfg)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    # dB values (0 to -80) and MFCCs (up to a few hundred): a few thousandths of a dB apart at most
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=1e-4)


@pytest.mark.usefixtures("one_torch_thread")
def test_channels_last_cnns_equal_default_layout() -> None:
    """The encoders run their conv blocks channels-last; the same weights on the same inputs in the default
    layout (the blocks called directly) give the same outputs and gradients."""
    torch.manual_seed(0)
    image, audio = ImageCNN(3, 32), AudioCNN(60)
    x_img, x_aud = torch.randn(5, 3, 32, 32), torch.randn(5, 60, 26)

    def plain_image(m: ImageCNN, x: torch.Tensor) -> torch.Tensor:
        return m.proj(m.pool(m.features(x)))

    def plain_audio(m: AudioCNN, x: torch.Tensor) -> torch.Tensor:
        h = m.features(x.unsqueeze(1)).flatten(1, 2).transpose(1, 2)
        h = m.rnn(h)[0]
        return m.proj(torch.cat([h.mean(1), h.max(1).values], dim=-1))

    for model, x, plain in ((image, x_img, plain_image), (audio, x_aud, plain_audio)):
        for mode in ("train", "eval"):
            getattr(model, mode)()
            model.zero_grad()
            ours = model(x)
            ours.square().sum().backward()
            grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
            model.zero_grad()
            ref = plain(model, x)
            ref.square().sum().backward()
            ref_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
            torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
            assert len(grads) == len(ref_grads) > 0
            for g, r in zip(grads, ref_grads, strict=True):
                torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-3)
        assert ours.is_contiguous()


def test_clip_length_percentile_keeps_transcripts_whole() -> None:
    """Clips are cut to the 95th percentile of training durations for a class label, but kept whole (the
    longest clip) for a generated-text label, where a cut clip would lose its last words; the setting
    overrides both."""
    import pandas as pd

    from polymodal.data.schema import Modality, ProblemType, Schema
    from polymodal.preprocess import Preprocessor

    rate = 8000
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.normal(size=rate * s // 10).astype(np.float32) for s in range(5, 25)]  # 0.5 .. 2.4 s
    df = pd.DataFrame({"clip": [f"{i}.wav" for i in range(len(waves))], "y": ["a b"] * len(waves)})

    def n_samples(problem: ProblemType, percentile: float | None) -> int:
        schema = Schema({"clip": Modality.AUDIO}, "y", problem)
        cfg = PreprocessConfig(sample_rate=rate, audio_percentile=percentile)
        return Preprocessor(schema, cfg).fit(df, {"clip": waves}).state["clip"]["n_samples"]

    longest = max(len(w) for w in waves)
    assert n_samples(ProblemType.TEXT, None) == longest
    assert n_samples(ProblemType.MULTICLASS, None) == int(np.percentile([len(w) for w in waves], 95))
    assert n_samples(ProblemType.MULTICLASS, 100) == longest
    assert n_samples(ProblemType.TEXT, 50) < longest
