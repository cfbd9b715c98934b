"""Pretrained encoders of a video's frames (`encoders.video.frames`).

Two kinds, both giving one feature vector per time step, in time order, which the video encoder's temporal model
(polymodal/encoders/video.py) then reads like the scratch CNN's per-frame embeddings:
- a pretrained image encoder (EfficientNet-Lite0, any Hugging Face vision model) on every frame: one step per frame;
- a pretrained video model through transformers on the whole clip, VideoMAE or TimeSformer: its patch tokens
  averaged over space, one step per tubelet (VideoMAE: num_frames / tubelet_size steps) or per frame
  (TimeSformer). Its frame count and frame size are fixed by its config: `frames_settings` checks them against
  preprocess.video_frames and image_size before anything is decoded.

Frozen, a clip's steps are computed once and kept in the feature cache (polymodal/encoders/cache.py); fine-tuned,
the module sits inside the video encoder and trains with it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from polymodal.data.schema import FRAMES, Modality

if TYPE_CHECKING:
    from polymodal.config import EncodersConfig
    from polymodal.encoders.pretrained import EncoderRef

log = logging.getLogger("polymodal")

VIDEO_MODELS = ("videomae", "timesformer")


def model_type(ref: EncoderRef | dict[str, Any]) -> str | None:
    """The `model_type` of a Hugging Face encoder's config.json (None for other kinds)."""
    ref = ref if isinstance(ref, dict) else ref.to_dict()
    if ref["kind"] != "hf":
        return None
    try:
        return json.loads((Path(ref["path"]) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def frames_kind(ref: EncoderRef | dict[str, Any]) -> str:
    """ "videomae" or "timesformer" for a video model, else "image" (an image encoder run on every frame)."""
    kind = model_type(ref)
    return kind if kind in VIDEO_MODELS else "image"


class FrameImages(nn.Module):
    """A pretrained image encoder on every frame: normalized pixels (b, t, 3, s, s) -> (b, t, dim)."""

    def __init__(self, image: nn.Module):
        super().__init__()
        self.image, self.dim = image, image.dim

    def forward(self, pixels: torch.Tensor, tokens: bool = True) -> torch.Tensor:
        b, t = pixels.shape[:2]
        return self.image(pixels.flatten(0, 1)).reshape(b, t, -1)


class VideoModel(nn.Module):
    """VideoMAE or TimeSformer on the whole clip: normalized pixels (b, num_frames, 3, s, s) -> (b, steps, dim),
    each step the mean of its patch tokens (the CLS token of TimeSformer dropped)."""

    def __init__(self, path: str, from_config: bool = False):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if config.model_type not in VIDEO_MODELS:
            raise ValueError(f"{path} is a {config.model_type} model, not one of {VIDEO_MODELS}")
        self.model = (AutoModel.from_config(config) if from_config
                      else AutoModel.from_pretrained(path, local_files_only=True))  # fmt: skip
        self.kind, self.dim = config.model_type, int(config.hidden_size)
        self.frames = int(config.num_frames)
        self.steps = self.frames // int(getattr(config, "tubelet_size", 1) or 1)

    def forward(self, pixels: torch.Tensor, tokens: bool = True) -> torch.Tensor:
        hidden = self.model(pixel_values=pixels).last_hidden_state
        b, d = hidden.shape[0], hidden.shape[-1]
        if self.kind == "timesformer":  # CLS, then the patches ordered (patch, frame)
            return hidden[:, 1:].reshape(b, -1, self.steps, d).mean(1)
        return hidden.reshape(b, self.steps, -1, d).mean(2)  # VideoMAE: tubelets ordered (time, row, column)


def video_frames_settings(enc: EncodersConfig, columns: dict[str, Modality]) -> dict[str, dict[str, Any]]:
    """The pretrained frames encoder of each video column (encoders.columns, else encoders.video.frames), keyed by
    its frames input: {"ref", "mode", "layers", "lora", "video": image | videomae | timesformer}. A frozen one
    always caches one vector per time step (the temporal model reads them), in torch."""
    from polymodal.encoders.pretrained import ALIASES, REGISTRY, resolve
    from polymodal.errors import UserError

    out = {}
    for col in [c for c, m in columns.items() if m is Modality.VIDEO]:
        name = enc.columns.get(col) or enc.video.frames
        if name in (None, "scratch"):
            continue
        ref = resolve(name)
        if REGISTRY.get(ALIASES.get(name, name), {}).get("modality", "image") != "image":
            raise UserError(
                f"video column {col!r}: {name!r} is not an image encoder; its frames need one "
                "(efficientnet-lite0, an HF vision model) or a video model (VideoMAE, TimeSformer)"
            )
        out[col + FRAMES] = {"ref": ref.to_dict(), "mode": "frozen" if enc.freeze else "finetune",
                             "layers": enc.finetune_layers, "lora": enc.lora, "video": frames_kind(ref)}  # fmt: skip
    return out


def build_frames(ref: EncoderRef, from_config: str | None = None) -> nn.Module:
    """The module of a pretrained frames encoder: normalized pixels (b, t, 3, s, s) -> (b, steps, dim)."""
    from polymodal.encoders.pretrained import build

    if frames_kind(ref) != "image":
        return VideoModel(from_config or ref.path, from_config=from_config is not None)
    return FrameImages(build(ref, Modality.IMAGE, from_config=from_config))


class PretrainedFrames(nn.Module):
    """The fine-tuned frames encoder inside the video encoder: uint8 frames (or floats in [0, 1] from the
    augmentation) -> scaled, resized to the encoder's size, standardized with its statistics -> (b, steps, dim)."""

    def __init__(self, pretrained: dict[str, Any], pixel: dict[str, Any], finetune_layers: int | None = None,
                 lora: bool = False, from_config: str | None = None):  # fmt: skip
        super().__init__()
        from polymodal.encoders.pretrained import EncoderRef, unfreeze_top_layers

        self.backbone = build_frames(EncoderRef(**pretrained), from_config=from_config)
        if lora:
            from peft import LoraConfig, get_peft_model

            # LoRA trains small adapters on every linear layer of the model; its own weights stay as they are.
            owner = self.backbone.image if isinstance(self.backbone, FrameImages) else self.backbone
            owner.model = get_peft_model(owner.model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
        else:
            unfreeze_top_layers(self.backbone, finetune_layers)
        self.size, self.dim = int(pixel["size"]), self.backbone.dim
        self.register_buffer("mean", torch.tensor(pixel["mean"], dtype=torch.float32).view(1, 1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(pixel["std"], dtype=torch.float32).view(1, 1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[-1] != self.size or x.shape[-2] != self.size:  # decoded at preprocess.image_size
            b, t = x.shape[:2]
            x = nn.functional.interpolate(x.flatten(0, 1), size=(self.size, self.size), mode="bilinear",
                                          align_corners=False).reshape(b, t, -1, self.size, self.size)  # fmt: skip
        return self.backbone((x - self.mean) / self.std)
