"""Training-time augmentation of audio features: the spectral (VTLP-style) warp moves a tone where it should, keeps
the MFCC rows consistent with the warped log-mel rows, and is the identity at no warp."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from polymodal.config import PreprocessConfig
from polymodal.preprocess import log_mel_mfcc
from polymodal.preprocess.augment import SpectralWarp

CFG = PreprocessConfig(sample_rate=8000, n_mels=40, n_mfcc=20)


def tones(*freqs: float) -> np.ndarray:
    t = np.arange(8000) / 8000
    return np.stack([0.5 * np.sin(2 * np.pi * f * t) for f in freqs]).astype(np.float32)


@pytest.fixture(scope="module")
def setup():
    feats = log_mel_mfcc(tones(600, 1000, 1500), CFG)
    mean, std = feats.mean(axis=(0, 2)), feats.std(axis=(0, 2)) + 1e-3
    warp = SpectralWarp(mean, std, CFG.n_mels, CFG.n_mfcc, CFG.sample_rate, strength=0.25)
    x = torch.as_tensor((feats - mean[:, None]) / std[:, None])
    return warp, x, mean, std


def test_no_warp_is_the_identity(setup):
    warp, x, _, _ = setup
    one = torch.ones(len(x))
    torch.testing.assert_close(warp.warp(x, one, one), x, atol=1e-3, rtol=1e-4)


def test_a_tone_moves_to_the_warped_frequency(setup):
    warp, x, mean, std = setup
    centres = librosa.mel_frequencies(CFG.n_mels + 2, fmin=0, fmax=4000)[1:-1]
    for scale, power in [(1.25, 1.0), (0.8, 1.0), (1.0, 0.8), (0.8, 0.8)]:
        out = warp.warp(x, torch.full((3,), scale), torch.full((3,), power)).numpy()
        log_mel = (out * std[:, None] + mean[:, None])[:, : CFG.n_mels].mean(axis=2)
        for row, f in zip(log_mel, (600, 1000, 1500), strict=True):
            expected = 4000 * scale * (f / 4000) ** power
            peak = centres[row.argmax()]
            # Within one mel band of where g(f) = F s (f / F)^b puts it.
            band = np.abs(centres - expected).argmin()
            assert abs(row.argmax() - band) <= 1, (scale, power, f, peak, expected)


def test_mfcc_rows_follow_the_warped_log_mel(setup):
    warp, x, mean, std = setup
    out = warp.warp(x, torch.tensor([1.2, 0.9, 1.1]), torch.tensor([0.85, 1.1, 1.0])).numpy()
    feats = out * std[:, None] + mean[:, None]
    expected = librosa.feature.mfcc(S=feats[:, : CFG.n_mels], n_mfcc=CFG.n_mfcc)  # librosa's own DCT
    np.testing.assert_allclose(feats[:, CFG.n_mels :], expected, atol=1e-2)


def test_random_warps_stay_in_range_and_differ_per_clip(setup):
    warp, x, _, _ = setup
    torch.manual_seed(0)
    out = warp(x.repeat(4, 1, 1))
    assert out.shape == (12, *x.shape[1:]) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[3])  # the same clip, warped differently
