"""Light, label-preserving augmentation of images and audio features, applied to training batches only (torch, on
the batch's device)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def augment_images(x: torch.Tensor, max_shift: float = 0.1, jitter: float = 0.1, rotate: float = 0.0,
                   scale: float = 0.0) -> torch.Tensor:  # fmt: skip
    """Random translation (up to `max_shift` of the side) and brightness/contrast jitter, per sample; with
    `rotate` (degrees) and `scale` (a fraction) also a rotation in +-rotate and a zoom by 1 +- scale
    (train.image_rotate, train.image_scale: new handwriting or viewpoints; off by default, since a photo's framing
    may carry the label).

    No flips: they change the meaning of digits and text in images.
    """
    n = x.shape[0]
    dev, dt = x.device, x.dtype
    # drawn only when asked for, so that the default augmentation's random stream is what it was
    angle = (
        (torch.rand(n, device=dev, dtype=dt) * 2 - 1) * (rotate * torch.pi / 180.0)
        if rotate
        else torch.zeros(n, device=dev, dtype=dt)
    )
    zoom = 1 + (torch.rand(n, device=dev, dtype=dt) * 2 - 1) * scale if scale else torch.ones(n, device=dev, dtype=dt)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=dt)
    # the grid maps output to input points: dividing by the zoom enlarges the picture
    theta[:, 0, 0] = torch.cos(angle) / zoom
    theta[:, 0, 1] = -torch.sin(angle) / zoom
    theta[:, 1, 0] = torch.sin(angle) / zoom
    theta[:, 1, 1] = torch.cos(angle) / zoom
    theta[:, :, 2] = (torch.rand(n, 2, device=dev, dtype=dt) * 2 - 1) * 2 * max_shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    scale_ = 1 + (torch.rand(n, 1, 1, 1, device=dev, dtype=dt) * 2 - 1) * jitter
    shift = (torch.rand(n, 1, 1, 1, device=dev, dtype=dt) * 2 - 1) * jitter
    return x * scale_ + shift


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


class AudioAugment(SpectralWarp):
    """Speaker-robust augmentation of a batch of scratch audio features for training, in this order:

    - speed perturbation (Ko et al. 2015): each clip played `rate` times as fast, rate uniform in 1 +- `speed`:
      its frames squeezed in time and every frequency scaled by the same rate (a faster, higher voice);
    - the spectral warp of `SpectralWarp` (`strength`, train.audio_warp), composed with the speed's frequency scale;
    - SpecAugment (Park et al. 2019): `freq_masks` bands of up to `freq_width` mel bands each set to the clip's mean
      log-mel (the MFCC rows recomputed from them), then `time_masks` spans of up to `time_width` frames set to the
      mean of the training features (0 once standardized).

    With everything at 0 it returns the batch unchanged."""

    def __init__(
        self,
        mean: Any,
        std: Any,
        n_mels: int,
        n_mfcc: int,
        sample_rate: int,
        strength: float = 0.0,
        speed: float = 0.0,
        freq_masks: int = 0,
        freq_width: int = 8,
        time_masks: int = 0,
        time_width: int = 10,
    ):
        super().__init__(mean, std, n_mels, n_mfcc, sample_rate, strength)
        self.speed, self.freq_masks, self.freq_width = float(speed), int(freq_masks), int(freq_width)
        self.time_masks, self.time_width = int(time_masks), int(time_width)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        uniform = lambda limit: (torch.rand(n, device=dev) * 2 - 1) * limit  # noqa: E731
        if self.strength > 0 or self.speed > 0:
            rate = 1 + uniform(self.speed)
            x = self.warp(x, torch.exp(uniform(self.strength)) * rate, torch.exp(uniform(self.strength)))
            if self.speed > 0:
                x = stretch_time(x, rate)
        if self.freq_masks > 0 and self.freq_width > 0:
            x = self.mask_bands(x)
        if self.time_masks > 0 and self.time_width > 0:
            keep = ~_spans(n, x.shape[-1], self.time_masks, self.time_width, dev)
            x = x * keep[:, None, :].to(x.dtype)
        return x

    def mask_bands(self, x: torch.Tensor) -> torch.Tensor:
        dev, dt = x.device, x.dtype
        mean, std, dct = (t.to(dev, dt) for t in (self.mean, self.std, self.dct))
        log_mel = (x * std + mean)[:, : self.n_mels]
        masked = _spans(x.shape[0], self.n_mels, self.freq_masks, self.freq_width, dev)[:, :, None]
        fill = log_mel.mean(dim=(1, 2), keepdim=True)
        log_mel = torch.where(masked, fill, log_mel)
        mfcc = torch.einsum("km,bmt->bkt", dct, log_mel)
        return (torch.cat([log_mel, mfcc], dim=1) - mean) / std


def stretch_time(x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """Each clip's frames read `rate` times as fast (linear interpolation; past the end, its last frame)."""
    t = x.shape[-1]
    pos = (torch.arange(t, device=x.device, dtype=x.dtype)[None, :] * rate[:, None].to(x.dtype)).clamp(max=t - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=t - 1)
    frac = (pos - lo.to(x.dtype))[:, None, :]
    a = torch.gather(x, 2, lo[:, None, :].expand(-1, x.shape[1], -1))
    b = torch.gather(x, 2, hi[:, None, :].expand(-1, x.shape[1], -1))
    return a + frac * (b - a)


def _spans(n: int, size: int, count: int, width: int, device: Any) -> torch.Tensor:
    """(n, size) True inside `count` random spans per row, each of a width uniform in [0, width]."""
    w = torch.randint(0, width + 1, (n, count, 1), device=device)
    start = (torch.rand(n, count, 1, device=device) * (size - w + 1).clamp(min=1)).long()
    idx = torch.arange(size, device=device)[None, None, :]
    return ((idx >= start) & (idx < start + w)).any(dim=1)
