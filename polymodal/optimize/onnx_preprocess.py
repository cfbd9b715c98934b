"""The scratch inputs' preprocessing as PyTorch modules, exported into the ONNX graph (see `export.py`): image
normalization, the audio features (STFT, mel, dB, MFCC, as librosa computes them) and the numeric standardization.
torch is imported on first use: `preprocess_modules` builds the classes."""

from __future__ import annotations

from typing import Any

import numpy as np


def audio_tables(sample_rate: int, n_mels: int, n_mfcc: int, n_samples: int) -> dict[str, np.ndarray]:
    """The STFT settings and constant tables of the audio features, as `log_mel_mfcc` computes them with librosa."""
    import librosa
    import scipy.fftpack

    n_fft = 1 << int(np.ceil(np.log2(sample_rate * 0.025)))
    return {
        "hop": np.array(sample_rate // 100),
        "n_fft": np.array(n_fft),
        "window": librosa.filters.get_window("hann", n_fft, fftbins=True).astype(np.float32),
        "mel": librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).T.astype(np.float32),
        "dct": scipy.fftpack.dct(np.eye(n_mels), type=2, norm="ortho", axis=0)[:n_mfcc].astype(np.float32),
        "pad": np.array(n_fft // 2),
    }


def preprocess_modules() -> tuple[Any, Any, Any]:
    """The classes ImagePixels, AudioFeatures and NumericRaw (built on each call: torch is imported lazily)."""
    import torch
    from torch import nn

    class ImagePixels(nn.Module):
        def __init__(self, mean: list[float], std: list[float]):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[:, None, None])
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[:, None, None])

        def forward(self, x):
            return (x.to(torch.float32) / 255.0 - self.mean) / self.std

    class AudioFeatures(nn.Module):
        def __init__(self, tables: dict[str, np.ndarray], mean: list[float], std: list[float], utterance: bool = False):
            super().__init__()
            for k in ("window", "mel", "dct"):
                self.register_buffer(k, torch.from_numpy(tables[k]))
            self.pad, self.hop, self.n_fft = int(tables["pad"]), int(tables["hop"]), int(tables["n_fft"])
            self.utterance = utterance  # preprocess.audio_norm: utterance (preprocess/audio.py)
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[:, None])
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[:, None])

        def forward(self, wave):
            padded = torch.nn.functional.pad(wave, (self.pad, self.pad))  # librosa: center=True, zeros
            # The ONNX STFT operator (real and imaginary parts last: ONNX has no complex tensors), so the graph
            # holds the window, not a DFT table.
            spec = torch.stft(padded, self.n_fft, hop_length=self.hop, win_length=self.n_fft, window=self.window,
                              center=False, onesided=True, return_complex=False)  # fmt: skip
            power = (spec**2).sum(-1).transpose(1, 2)  # (b, n_frames, n_freq)
            mel = (power @ self.mel).transpose(1, 2)  # (b, n_mels, n_frames)
            peak = torch.clamp(mel.amax(dim=(1, 2), keepdim=True), min=1e-10)
            log_mel = torch.clamp(10.0 * torch.log10(torch.clamp(mel, min=1e-10) / peak), min=-80.0)
            feats = torch.cat([log_mel, self.dct @ log_mel], dim=1)
            if self.utterance:
                feats = self.utterance_norm(wave, feats, log_mel.shape[1])
            return (feats - self.mean) / self.std

        def utterance_norm(self, wave, feats, n_mels: int):
            """`polymodal.preprocess.audio.utterance_norm` over `clip_frames`, in PyTorch."""
            from polymodal.preprocess.audio import MIN_SPREAD

            n = wave.shape[1]
            idx = torch.arange(n, device=wave.device)
            sound = wave != 0
            first = torch.where(sound, idx, torch.full_like(idx, n)).amin(dim=1, keepdim=True) // self.hop
            last = torch.where(sound, idx, torch.zeros_like(idx)).amax(dim=1, keepdim=True) // self.hop
            frames = torch.arange(feats.shape[-1], device=wave.device)[None, :]
            mask = (frames >= first) & (frames <= last)
            mask = mask | ~mask.any(dim=1, keepdim=True)
            m = mask[:, None, :].to(feats.dtype)
            count = m.sum(dim=2, keepdim=True)
            centred = feats - (feats * m).sum(dim=2, keepdim=True) / count
            var = ((centred[:, :n_mels] ** 2) * m).sum(dim=(1, 2), keepdim=True) / (count[:, :1] * n_mels)
            return centred / torch.clamp(torch.sqrt(var), min=MIN_SPREAD)

    class NumericRaw(nn.Module):
        def __init__(self, mean: list[float], std: list[float], clip: float):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float64))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float64))
            self.clip = clip

        def forward(self, x):
            missing = torch.isnan(x)
            z = torch.where(missing, torch.zeros_like(x), (x - self.mean) / self.std)
            z = torch.clamp(z, -self.clip, self.clip)
            return torch.cat([z, missing.to(torch.float64)], dim=1).to(torch.float32)

    return ImagePixels, AudioFeatures, NumericRaw
