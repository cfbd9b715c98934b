"""Per-utterance normalization of scratch audio features (`preprocess.audio_norm: utterance`), in numpy; the
exported graph computes the same in PyTorch (polymodal/optimize/onnx_preprocess.py, tested for parity).

Each clip's features are normalized on their own before the global standardization: every feature row loses its
mean over the clip's frames, and all rows are divided by one spread, the standard deviation of the clip's
centred log-mel values. One spread per clip (not one per row) keeps the MFCC rows the DCT of the log-mel rows, so
the spectral warp and SpecAugment (preprocess/augment.py) stay exact on normalized features. The clip's frames are
those whose centre lies between its first and last non-zero sample (the zeros that pad it to the fitted length,
and the -80 dB floor they give, are left out of the statistics)."""

from __future__ import annotations

import numpy as np

MIN_SPREAD = 1.0  # dB: a silent or constant clip is centred, not blown up


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
