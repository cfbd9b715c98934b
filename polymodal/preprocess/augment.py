"""Light, label-preserving augmentation of images and audio features, applied to training batches only (torch, on
the batch's device)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def augment_images(x: torch.Tensor, max_shift: float = 0.1, jitter: float = 0.1) -> torch.Tensor:
    """Random translation (up to `max_shift` of the side) and brightness/contrast jitter, per sample.

    No flips: they change the meaning of digits and text in images.
    """
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = (torch.rand(n, 2, device=x.device, dtype=x.dtype) * 2 - 1) * 2 * max_shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    scale = 1 + (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) * 2 - 1) * jitter
    shift = (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) * 2 - 1) * jitter
    return x * scale + shift


class SpectralWarp:
    """A random frequency warp of a batch of scratch audio features (VTLP-style, Jaitly & Hinton 2013), for
    training only: each clip's spectrum is moved from frequency f to g(f) = F * s * (f / F) ** b (F: the Nyquist
    frequency), with log s and log b drawn uniformly in [-strength, strength]. A change of speaker (vocal tract
    length) or of formants (McAdams anonymization, about s = 0.8, b = 0.8 at alpha 0.8) is such a warp, so a model
    trained with it depends less on whose voice it hears.

    The features are the preprocessor's: (batch, n_mels + n_mfcc, frames), standardized with `mean` and `std`
    per feature row. The log-mel rows are warped by interpolation across mel bands, the MFCC rows recomputed from
    them (the DCT-II that librosa applies), then all standardized again."""

    def __init__(self, mean: Any, std: Any, n_mels: int, n_mfcc: int, sample_rate: int, strength: float):
        import librosa

        self.mean = torch.as_tensor(np.asarray(mean, np.float32)).reshape(-1, 1)
        self.std = torch.as_tensor(np.asarray(std, np.float32)).reshape(-1, 1)
        self.n_mels, self.strength, self.nyquist = n_mels, float(strength), sample_rate / 2
        # Centre frequency of each mel band (librosa's filters: n_mels + 2 edges from 0 to Nyquist).
        centres = librosa.mel_frequencies(n_mels + 2, fmin=0.0, fmax=self.nyquist)[1:-1]
        self.centres = torch.as_tensor(centres, dtype=torch.float32)
        k, n = np.arange(n_mfcc)[:, None], np.arange(n_mels)[None, :]
        dct = np.sqrt(2.0 / n_mels) * np.cos(np.pi * k * (2 * n + 1) / (2 * n_mels))
        dct[0] /= np.sqrt(2.0)  # orthonormal DCT-II, as scipy's norm="ortho"
        self.dct = torch.as_tensor(dct, dtype=torch.float32)

    def warp(self, x: torch.Tensor, scale: torch.Tensor, power: torch.Tensor) -> torch.Tensor:
        """`x` warped by per-clip `scale` (s) and `power` (b), each of shape (batch,)."""
        dev, dt = x.device, x.dtype
        mean, std, centres, dct = (t.to(dev, dt) for t in (self.mean, self.std, self.centres, self.dct))
        feats = x * std + mean
        log_mel = feats[:, : self.n_mels]
        # The band at centre f now shows what the clip had at g^-1(f) = F * (f / (F s)) ** (1 / b).
        u = (centres[None, :] / (self.nyquist * scale[:, None])).clamp(min=1e-6)
        source = self.nyquist * u ** (1.0 / power[:, None])
        hi = torch.searchsorted(centres, source.contiguous()).clamp(1, self.n_mels - 1)
        lo = hi - 1
        frac = ((source - centres[lo]) / (centres[hi] - centres[lo])).clamp(0.0, 1.0)
        # Past the first or last band the edge band's value stands (clamped), never extrapolated.
        a = torch.gather(log_mel, 1, lo[:, :, None].expand_as(log_mel))
        b = torch.gather(log_mel, 1, hi[:, :, None].expand_as(log_mel))
        warped = a + frac[:, :, None] * (b - a)
        mfcc = torch.einsum("km,bmt->bkt", dct, warped)
        return (torch.cat([warped, mfcc], dim=1) - mean) / std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        draw = lambda: torch.exp((torch.rand(n, device=x.device) * 2 - 1) * self.strength)  # noqa: E731
        return self.warp(x, draw(), draw())
