"""The scratch audio features (`log_mel_mfcc`) and their per-utterance normalization (`preprocess.audio_norm:
utterance`), in numpy; the exported graph computes the same in PyTorch (polymodal/optimize/onnx_preprocess.py,
tested for parity).

The features are librosa's (a centred, zero-padded STFT with a periodic Hann window, Slaney mel filters, an
orthonormal DCT-II), computed with numpy's FFT and constant tables built once per setting: librosa's own call
rebuilds the mel filters and checks its arguments on every call, which made it most of a served request's
preprocessing (0.84 ms against 0.17 ms for a 0.25 s clip; the values agree to 1e-6 of the peak, a test checks it).

Each clip's features are normalized on their own before the global standardization: every feature row loses its
mean over the clip's frames, and all rows are divided by one spread, the standard deviation of the clip's
centred log-mel values. One spread per clip (not one per row) keeps the MFCC rows the DCT of the log-mel rows, so
the spectral warp and SpecAugment (preprocess/augment.py) stay exact on normalized features. The clip's frames are
those whose centre lies between its first and last non-zero sample (the zeros that pad it to the fitted length,
and the -80 dB floor they give, are left out of the statistics)."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from polymodal.config import PreprocessConfig

MIN_SPREAD = 1.0  # dB: a silent or constant clip is centred, not blown up


def stft_settings(sample_rate: int) -> tuple[int, int]:
    """(n_fft, hop): 10 ms frames, a window of at least 25 ms."""
    return 1 << int(np.ceil(np.log2(sample_rate * 0.025))), sample_rate // 100


@lru_cache(maxsize=32)
def _window_mel(sample_rate: int, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """(Hann window, mel filters (n_mels, bins)), as librosa builds them."""
    import librosa

    n_fft, _ = stft_settings(sample_rate)
    window = librosa.filters.get_window("hann", n_fft, fftbins=True).astype(np.float64)
    return window, librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).astype(np.float32)


@lru_cache(maxsize=32)
def _dct(n_mels: int, n_mfcc: int) -> np.ndarray:
    """(n_mfcc, n_mels): librosa's MFCC, an orthonormal DCT-II of the log-mel rows."""
    import scipy.fft

    return scipy.fft.dct(np.eye(n_mels), type=2, norm="ortho", axis=0)[:n_mfcc].astype(np.float32)


def mel_power(waves: np.ndarray, sample_rate: int, n_mels: int) -> np.ndarray:
    """(n, samples) -> (n, n_mels, frames): the mel power spectrogram (librosa's `melspectrogram`, power 2)."""
    n_fft, hop = stft_settings(sample_rate)
    window, mel = _window_mel(sample_rate, n_mels)
    waves = np.asarray(waves, dtype=np.float32)
    n, length = waves.shape
    # The zero padding and the frames as a strided view, built directly: np.pad and sliding_window_view cost
    # more than the FFT itself on a served clip (same values).
    padded = np.zeros((n, length + n_fft), dtype=np.float32)
    padded[:, n_fft // 2 : n_fft // 2 + length] = waves
    s0, s1 = padded.strides
    frames = np.lib.stride_tricks.as_strided(padded, (n, 1 + length // hop, n_fft), (s0, hop * s1, s1), writeable=False)
    spec = np.fft.rfft(frames * window, axis=-1)
    power = spec.real**2
    power += spec.imag**2
    return np.einsum("ntb,mb->nmt", power.astype(np.float32), mel)


def log_mel_mfcc(waves: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """(n, samples) -> (n, n_mels + n_mfcc, frames): log-mel (dB below each clip's peak) stacked with MFCC."""
    mel = mel_power(waves, cfg.sample_rate, cfg.n_mels)
    peak = np.maximum(mel.max(axis=(-2, -1), keepdims=True), 1e-10)
    log_mel = np.maximum(10.0 * np.log10(np.maximum(mel, 1e-10) / peak), -80.0)
    mfcc = np.einsum("km,nmt->nkt", _dct(cfg.n_mels, cfg.n_mfcc), log_mel)
    feats = np.concatenate([log_mel, mfcc], axis=-2).astype(np.float32)
    if cfg.audio_norm == "utterance":  # each clip on its own first
        _, hop = stft_settings(cfg.sample_rate)
        feats = utterance_norm(feats, clip_frames(waves, hop, feats.shape[-1]), cfg.n_mels)
    return feats


def clip_frames(waves: np.ndarray, hop: int, n_frames: int) -> np.ndarray:
    """(n, n_frames) bool: the frames of each zero-padded clip (all of them for a silent clip)."""
    sound = waves != 0
    n = waves.shape[1]
    idx = np.arange(n)
    first = np.where(sound, idx, n).min(axis=1, keepdims=True) // hop
    last = np.where(sound, idx, 0).max(axis=1, keepdims=True) // hop
    frames = np.arange(n_frames)[None, :]
    mask = (frames >= first) & (frames <= last)
    return mask | ~mask.any(axis=1, keepdims=True)


def utterance_norm(feats: np.ndarray, mask: np.ndarray, n_mels: int) -> np.ndarray:
    """(n, rows, frames) features normalized per clip over its `mask` frames (see the module's docstring)."""
    m = mask[:, None, :].astype(feats.dtype)
    count = m.sum(axis=2, keepdims=True)
    centred = feats - (feats * m).sum(axis=2, keepdims=True) / count
    var = ((centred[:, :n_mels] ** 2) * m).sum(axis=(1, 2), keepdims=True) / (count[:, :1] * n_mels)
    return (centred / np.maximum(np.sqrt(var), MIN_SPREAD)).astype(np.float32)
