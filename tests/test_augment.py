"""Training-time augmentation of audio features: the spectral (VTLP-style) warp moves a tone where it should, keeps
the MFCC rows consistent with the warped log-mel rows, and is the identity at no warp; speed perturbation and
SpecAugment masks; per-utterance normalization, in numpy and inside the exported graph."""

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


# ---- speaker-robust scratch audio: speed perturbation, SpecAugment, per-utterance normalization ----------------


def burst(freq: float, seconds: float = 0.5, total: float = 1.0) -> np.ndarray:
    """A tone of `seconds`, then silence (zeros) up to `total`, at 8 kHz."""
    t = np.arange(int(seconds * 8000)) / 8000
    out = np.zeros(int(total * 8000), np.float32)
    out[: t.size] = 0.5 * np.sin(2 * np.pi * freq * t)
    return out


def augmenter(feats: np.ndarray, **kw):
    from polymodal.preprocess.augment import AudioAugment

    mean, std = feats.mean(axis=(0, 2)), feats.std(axis=(0, 2)) + 1e-3
    x = torch.as_tensor((feats - mean[:, None]) / std[:, None])
    return AudioAugment(mean, std, CFG.n_mels, CFG.n_mfcc, CFG.sample_rate, **kw), x, mean, std


def test_audio_augment_off_is_the_identity():
    feats = log_mel_mfcc(np.stack([burst(800)]), CFG)
    aug, x, _, _ = augmenter(feats)
    assert torch.equal(aug(x), x)


def test_speed_perturbation_moves_pitch_and_squeezes_time():
    from polymodal.preprocess.augment import stretch_time

    feats = log_mel_mfcc(np.stack([burst(800)]), CFG)
    aug, x, mean, std = augmenter(feats, speed=0.3)
    rate = torch.tensor([1.25])
    out = stretch_time(aug.warp(x, rate, torch.ones(1)), rate).numpy()[0]
    log_mel = out * std[:, None] + mean[:, None]
    centres = librosa.mel_frequencies(CFG.n_mels + 2, fmin=0, fmax=4000)[1:-1]
    loud = log_mel[: CFG.n_mels].max(axis=0) > -40  # frames where the tone is
    assert abs(log_mel[: CFG.n_mels, loud].mean(axis=1).argmax() - np.abs(centres - 1000).argmin()) <= 1
    # 0.5 s of tone played 1.25 times as fast lasts 0.4 s: 40 of the 10 ms frames (one either side).
    assert abs(int(loud.sum()) - 40) <= 2 and loud[:38].all() and not loud[43:].any()
    torch.manual_seed(0)
    rand = aug(x.repeat(6, 1, 1))
    assert torch.isfinite(rand).all() and not torch.allclose(rand[0], rand[1])


def test_spec_augment_masks_bands_and_frames_consistently():
    feats = log_mel_mfcc(np.stack([burst(600), burst(1500)]), CFG)
    aug, x, mean, std = augmenter(feats, freq_masks=2, freq_width=6, time_masks=2, time_width=12)
    torch.manual_seed(1)
    out = aug(x.repeat(8, 1, 1)).numpy()
    dropped = (out == 0).all(axis=1)  # frames masked in time: every feature at the training mean
    assert dropped.any() and dropped.sum(axis=1).max() <= 2 * 12
    feats_out = out * std[:, None] + mean[:, None]
    kept = ~dropped[0]
    log_mel = feats_out[0, : CFG.n_mels][:, kept]
    # Frequency masks: whole bands equal to one value (the clip's mean log-mel) over the frames not masked in time.
    flat = np.ptp(log_mel, axis=1) < 1e-3
    assert 0 < flat.sum() <= 2 * 6
    # The MFCC rows are still the DCT of the (masked) log-mel rows.
    expected = librosa.feature.mfcc(S=log_mel, n_mfcc=CFG.n_mfcc)
    np.testing.assert_allclose(feats_out[0, CFG.n_mels :][:, kept], expected, atol=1e-2)


def test_utterance_norm_per_clip_and_removes_a_channel_tilt():
    from polymodal.preprocess.audio import clip_frames, utterance_norm

    waves = np.stack([burst(600, 0.4), burst(1500, 0.7)])
    feats = log_mel_mfcc(waves, CFG)
    mask = clip_frames(waves, 80, feats.shape[-1])
    assert mask[0].sum() == 40 and mask[1].sum() == 70  # the tone's frames, not the padding after it
    norm = utterance_norm(feats, mask, CFG.n_mels)
    for i in range(2):
        np.testing.assert_allclose(norm[i][:, mask[i]].mean(axis=1), 0, atol=1e-4)
        assert abs(norm[i, : CFG.n_mels][:, mask[i]].std() - 1) < 1e-3
    # A fixed per-band gain (a microphone's tilt) shifts each log-mel row by a constant: gone after normalizing.
    tilt = np.linspace(-6, 6, CFG.n_mels)[:, None].astype(np.float32)
    shifted = feats.copy()
    shifted[:, : CFG.n_mels] += tilt
    shifted[:, CFG.n_mels :] = librosa.feature.mfcc(S=shifted[:, : CFG.n_mels], n_mfcc=CFG.n_mfcc)
    again = utterance_norm(shifted, mask, CFG.n_mels)
    np.testing.assert_allclose(again[:, :, mask[1]][1], norm[:, :, mask[1]][1], atol=1e-3)
    # Through the config: log_mel_mfcc normalizes when preprocess.audio_norm is utterance.
    utt = PreprocessConfig(sample_rate=8000, n_mels=40, n_mfcc=20, audio_norm="utterance")
    np.testing.assert_allclose(log_mel_mfcc(waves, utt), norm, atol=1e-5)


def test_augmented_utterance_normalized_model_trains_and_exports(synth_split, tmp_path, monkeypatch, one_torch_thread):
    """All of it on in a fit: the augmentation runs on training batches, and the exported graph (which computes the
    per-utterance normalization itself) matches PyTorch."""
    import pandas as pd
    import synth

    from polymodal import MultimodalPredictor
    from polymodal.optimize.export import export_model
    from polymodal.preprocess.augment import AudioAugment

    calls = []
    original = AudioAugment.__call__
    monkeypatch.setattr(AudioAugment, "__call__", lambda self, x: calls.append(len(x)) or original(self, x))
    train, test = synth_split
    settings = synth.FAST | {"max_epochs": 2, "preprocess": synth.FAST["preprocess"] | {"audio_norm": "utterance"}}
    p = MultimodalPredictor(label="y", fusion="early", ignore=["image", "caption", "price", "shade", "score"],
                            audio_speed=0.1, audio_warp=0.1, audio_freq_masks=2, audio_time_masks=2,
                            **settings)  # fmt: skip
    p.fit(train)
    assert calls and p.config_.train.audio_time_masks == 2 and p.config_.preprocess.audio_norm == "utterance"
    graph = export_model(p.save(tmp_path / "m"), tmp_path / "m.onnx")
    torch_p = MultimodalPredictor.load(tmp_path / "m").predict_proba(test).to_numpy()
    onnx_p = MultimodalPredictor.load(graph, runtime="onnx").predict_proba(test).to_numpy()
    assert onnx_p.shape == (len(pd.read_csv(test)), 4) and np.abs(onnx_p - torch_p).max() <= 1e-4


# ---- images: rotation and zoom (train.image_rotate, train.image_scale) -----------------------------------------------
def _bar_angle(picture: torch.Tensor) -> float:
    """The orientation (degrees) of the bright pixels' main axis, from their second moments."""
    ys, xs = torch.nonzero(picture > 0.5, as_tuple=True)
    x, y = xs.float() - xs.float().mean(), ys.float() - ys.float().mean()
    return float(torch.rad2deg(0.5 * torch.atan2(2 * (x * y).mean(), (x * x).mean() - (y * y).mean())))


def test_images_rotate_and_zoom_within_their_ranges_per_sample(one_torch_thread):
    from polymodal.preprocess.augment import augment_images

    torch.manual_seed(0)
    bar = torch.zeros(64, 1, 48, 48)
    bar[:, :, 23:25, 8:40] = 1.0  # a horizontal bar through the centre
    angles = [_bar_angle(p[0]) for p in augment_images(bar, max_shift=0.0, jitter=0.0, rotate=30.0)]
    assert max(abs(a) for a in angles) <= 30 + 4  # within the range (a pixel grid's margin) ...
    assert min(angles) < -15 and max(angles) > 15  # ... both ways, drawn per sample
    plain = [_bar_angle(p[0]) for p in augment_images(bar, max_shift=0.0, jitter=0.0)]
    assert max(abs(a) for a in plain) < 1  # no rotation unless asked for

    square = torch.zeros(64, 1, 48, 48)
    square[:, :, 16:32, 16:32] = 1.0
    area = (augment_images(square, max_shift=0.0, jitter=0.0, scale=0.3) > 0.5).sum(dim=(1, 2, 3)).float() / 256
    assert area.min() >= 0.7**2 - 0.1 and area.max() <= 1.3**2 + 0.1
    assert area.min() < 0.8 and area.max() > 1.2  # smaller and larger both drawn


def test_a_clip_rotates_alike_in_every_frame(one_torch_thread):
    from polymodal.preprocess.video import ClipAugment

    torch.manual_seed(0)
    clip = torch.zeros(16, 1, 3, 32, 32)
    clip[..., 15:17, 4:28] = 1.0
    clip = clip.expand(16, 6, 3, 32, 32).contiguous()
    out = ClipAugment(jitter=0.0, rotate=40.0, scale=0.2)(clip)
    torch.testing.assert_close(out, out[:, :1].expand_as(out))  # one transform per clip, every frame alike
    angles = [_bar_angle(c[0, 0]) for c in out]
    assert max(angles) - min(angles) > 20  # and another one per clip


def test_image_rotation_reaches_training_and_bad_ranges_are_refused(synth_split, monkeypatch, one_torch_thread):
    import synth

    import polymodal.training.fit as fit_module
    from polymodal import MultimodalPredictor
    from polymodal.config.checks import ConfigError

    seen = []
    original = fit_module.augment_images
    monkeypatch.setattr(fit_module, "augment_images", lambda x, **kw: seen.append(kw) or original(x, **kw))
    train, _ = synth_split
    p = MultimodalPredictor(label="y", fusion="early", ignore=["caption", "clip", "price", "shade", "score"],
                            image_rotate=15.0, image_scale=0.1, **synth.FAST | {"max_epochs": 1})  # fmt: skip
    p.fit(train)
    assert seen and all(kw == {"rotate": 15.0, "scale": 0.1} for kw in seen)
    with pytest.raises(ConfigError, match=r"train.image_rotate must be from 0.0 to 180.0, not -5"):
        MultimodalPredictor(label="y", image_rotate=-5)
    with pytest.raises(ConfigError, match=r"train.image_scale must be from 0.0 to 0.9, not 1.5"):
        MultimodalPredictor(label="y", image_scale=1.5)
