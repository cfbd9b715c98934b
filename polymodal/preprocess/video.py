"""Video inputs: the frames array of a video column, its statistics, and its training-time augmentation.

A video column is two fusion inputs (polymodal/data/schema.py): "COL:frames", handled here, and "COL:sound",
preprocessed exactly like an audio column. The frames stay uint8 (batch, frames, 3, size, size), a quarter of
float32's memory; the video encoder scales and standardizes them with the statistics fitted here (so an exported
graph takes the same uint8 frames).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polymodal.config import PreprocessConfig
from polymodal.data.schema import Modality

STATS_CLIPS = 200  # frame statistics: the first this many clips (8 frames of 64 x 64: 20 MB of uint8)


def video_frames(clips: list[np.ndarray | None], cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Decoded clips (None where the cell was empty) -> (rows, frames, 3, size, size) uint8 and their presence."""
    s = cfg.image_size
    out = np.zeros((len(clips), cfg.video_frames, 3, s, s), dtype=np.uint8)
    present = np.array([c is not None for c in clips], dtype=bool)
    for i, c in enumerate(clips):
        if c is not None:
            out[i] = c
    return out, present


def video_state(modality: Modality, sample: list[np.ndarray], cfg: PreprocessConfig) -> dict[str, Any]:
    """The fitted state of a video's frames (per-channel mean and std of the pixels in [0, 1]), or of a sound
    track that no training clip has (every video silent: a one-second input the mask always hides)."""
    if modality is Modality.AUDIO:
        n = cfg.n_mels + cfg.n_mfcc
        return {"n_samples": int(cfg.sample_rate), "mean": [0.0] * n, "std": [1.0] * n}
    if not sample:
        raise ValueError("no video file could be read in the training rows")
    stack = np.stack(sample[:STATS_CLIPS]).astype(np.float32) / 255.0  # (n, frames, 3, h, w)
    return {
        "mean": stack.mean(axis=(0, 1, 3, 4)).tolist(),
        "std": np.maximum(stack.std(axis=(0, 1, 3, 4)), 1e-3).tolist(),
    }


class ClipAugment:
    """Training-time augmentation of a batch of clips (batch, frames, 3, h, w), uint8 or float in [0, 1]:

    - temporal jitter: each kept frame is, with probability `jitter`, swapped for the frame sampled just before or
      after it, and the indices are sorted again, so the clip shows slightly different moments in the same order;
    - the image augmentation of image columns (shift, brightness, contrast; rotation and zoom when asked for),
      drawn once per clip and applied to all its frames alike (the frames are stacked as channels), so a digit
      does not jump between frames.

    Returns floats in [0, 1], which the video encoder takes like uint8 frames."""

    def __init__(self, jitter: float = 0.2, rotate: float = 0.0, scale: float = 0.0):
        self.jitter, self.rotate, self.scale = float(jitter), float(rotate), float(scale)

    def __call__(self, x):
        import torch

        from polymodal.preprocess.augment import augment_images

        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        b, t = x.shape[:2]
        if self.jitter > 0 and t > 1:
            idx = torch.arange(t, device=x.device).expand(b, t)
            move = (torch.rand(b, t, device=x.device) < self.jitter).long()
            step = torch.where(torch.rand(b, t, device=x.device) < 0.5, -1, 1)
            idx = (idx + move * step).clamp(0, t - 1).sort(dim=1).values
            x = torch.gather(x, 1, idx[:, :, None, None, None].expand_as(x))
        flat = x.reshape(b, t * x.shape[2], *x.shape[3:])
        return augment_images(flat, rotate=self.rotate, scale=self.scale).reshape(x.shape).clamp(0.0, 1.0)


# VideoMAE's and TimeSformer's processors standardize with ImageNet's statistics unless their files say otherwise.
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def frames_settings(pretrained: dict[str, Any], cfg: PreprocessConfig) -> dict[str, Any]:
    """The settings of a pretrained frames encoder (`encoders.video.frames`): how its clips are decoded (frames,
    fps, fit, at the encoder's size), its pixel statistics, and `steps`, the time steps it gives per clip. A video
    model's frame count and size are fixed by its config: a mismatch with preprocess.video_frames / image_size is
    a ConfigError that says what to set."""
    import json
    from pathlib import Path

    from polymodal.config import ConfigError
    from polymodal.preprocess.pretrained import settings

    ref, kind = pretrained["ref"], pretrained.get("video", "image")
    st: dict[str, Any] = {"frames": cfg.video_frames, "fps": cfg.video_fps, "fit": cfg.image_fit,
                          "max_seconds": cfg.video_max_seconds, "max_pixels": cfg.video_max_pixels}  # fmt: skip
    if kind == "image":
        return settings(Modality.IMAGE, ref["kind"], ref["path"]) | st | {"steps": cfg.video_frames}
    folder = Path(ref["path"])
    config = json.loads((folder / "config.json").read_text())
    frames, size = int(config["num_frames"]), int(config["image_size"])
    if (frames, size) != (cfg.video_frames, cfg.image_size):
        raise ConfigError(
            f"the video model {ref['name']!r} ({kind}) reads clips of {frames} frames of {size} x {size} pixels, but "
            f"preprocess.video_frames is {cfg.video_frames} and preprocess.image_size is {cfg.image_size}: set "
            f"preprocess.video_frames={frames} and preprocess.image_size={size} (--set preprocess.video_frames="
            f"{frames} --set preprocess.image_size={size})"
        )
    stats = dict(IMAGENET)
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        if (folder / name).exists():
            proc = json.loads((folder / name).read_text())
            stats = {"mean": proc.get("image_mean", stats["mean"]), "std": proc.get("image_std", stats["std"])}
    steps = frames // int(config.get("tubelet_size", 1) or 1)
    return {"size": size, **stats} | st | {"steps": steps}
