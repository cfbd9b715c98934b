"""Encoders: one `nn.Module` per fusion input, each with `.dim` and `forward(x) -> (batch, dim)`; built with
`tokens=True` (for a token-level fusion) also `forward_tokens(x) -> Tokens` (see encoders/tokens.py).

Three kinds, chosen by the input spec the preprocessor writes:
- scratch (default): the modality's small network, trained end to end;
- frozen pretrained: the input already is the pretrained embedding (from the feature cache); a trainable
  projection adapts it;
- fine-tuned pretrained: the Hugging Face (or EfficientNet) backbone inside the network, all or its top layers
  trained, optionally through LoRA adapters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from polymodal.data.schema import Modality
from polymodal.encoders.scratch import AudioCNN, CategoricalMLP, ImageCNN, NumericMLP, TextRNN
from polymodal.encoders.tokens import Tokens, grid_coords, single_token
from polymodal.encoders.video import VideoEncoder

SCRATCH_ENCODERS: dict[Modality, type[nn.Module]] = {
    Modality.TEXT: TextRNN,
    Modality.IMAGE: ImageCNN,
    Modality.AUDIO: AudioCNN,
    Modality.NUMERIC: NumericMLP,
    Modality.CATEGORICAL: CategoricalMLP,
    Modality.VIDEO: VideoEncoder,  # a video's frames; its sound track is an audio input
}


class FrozenProjection(nn.Module):
    """Precomputed pretrained embeddings -> LayerNorm -> Linear -> ReLU. A pooled embedding per row is one token;
    cached token outputs (`sequence`: (batch, tokens, in_dim), zero rows for padding) are projected token by
    token and mean-pooled over the real ones, and an image's patches or feature-map cells keep their grid."""

    def __init__(self, in_dim: int, dim: int, tokens: bool = False, sequence: bool = False, image: bool = False):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim), nn.ReLU(inplace=True))
        self.dim, self.sequence, self.image = dim, sequence, image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sequence:
            return self.net(x.float())
        return self.forward_tokens(x).pooled

    def forward_tokens(self, x: torch.Tensor) -> Tokens:
        if not self.sequence:
            return single_token(self(x))
        x = x.float()
        mask = (x != 0).any(dim=-1)  # a cached token is never all zeros; padding always is
        hidden = self.net(x)
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return image_grid(hidden, mask, pooled) if self.image else Tokens(hidden, mask, pooled)


def image_grid(hidden: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor) -> Tokens:
    """An image encoder's tokens as a grid of regions: patches or feature-map cells form a square, maybe after a
    CLS token (dropped: the grid says it all); any other count stays a plain sequence."""
    import math

    n = hidden.shape[1]
    for skip in (0, 1):
        side = math.isqrt(n - skip)
        if side * side == n - skip and side > 0:
            grid = hidden[:, skip:]
            return Tokens(grid, mask[:, skip:], pooled, grid_coords(side, side, hidden.device), (side, side))
    return Tokens(hidden, mask, pooled)


class FineTuned(nn.Module):
    """A pretrained backbone trained with the rest of the network, followed by a projection."""

    def __init__(
        self,
        modality: Modality,
        pretrained: dict[str, Any],
        dim: int,
        pad_id: int = 0,
        layers: int | None = None,
        lora: bool = False,
        from_config: str | None = None,
        tokens: bool = False,
    ):
        super().__init__()
        self.modality, self.pad_id = modality, pad_id
        from polymodal.encoders.pretrained import EncoderRef, build, unfreeze_top_layers

        ref = EncoderRef(**pretrained)
        self.backbone = build(ref, modality, pad_id=pad_id, from_config=from_config)
        if lora:
            from peft import LoraConfig, get_peft_model

            # LoRA trains small adapters on every linear layer; the backbone's own weights stay as they are.
            self.backbone.model = get_peft_model(
                self.backbone.model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
            )
        else:
            unfreeze_top_layers(self.backbone, layers)
        self.proj = nn.Sequential(nn.Linear(self.backbone.dim, dim), nn.ReLU(inplace=True))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(x))

    def forward_tokens(self, x: torch.Tensor) -> Tokens:
        """The backbone's last hidden states (a transformer's tokens, ViT patches, a CNN's last feature map)."""
        hidden = self.proj(self.backbone(x, tokens=True))  # (b, n, dim)
        b, n, _ = hidden.shape
        if self.modality == Modality.TEXT:
            mask = x != self.pad_id
            mask[:, 0] = True  # the CLS token of an empty text
        else:
            mask = torch.ones(b, n, dtype=torch.bool, device=hidden.device)
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return image_grid(hidden, mask, pooled) if self.modality == Modality.IMAGE else Tokens(hidden, mask, pooled)


def build_encoder(modality: Modality, input_spec: dict[str, Any], dim: int, tokens: bool = False) -> nn.Module:
    """Build an input's encoder from the preprocessor's description of that input; `tokens`: it will also be
    asked for `forward_tokens` (a token-level fusion)."""
    if modality is Modality.VIDEO:  # scratch, frozen or fine-tuned frames: the temporal model is the same
        return VideoEncoder(**input_spec, dim=dim, tokens=tokens)
    if "in_dim" in input_spec:
        return FrozenProjection(dim=dim, tokens=tokens, **input_spec)
    if "pretrained" in input_spec:
        return FineTuned(modality, dim=dim, tokens=tokens, **input_spec)
    return SCRATCH_ENCODERS[modality](**input_spec, dim=dim, tokens=tokens)


__all__ = [
    "SCRATCH_ENCODERS",
    "AudioCNN",
    "CategoricalMLP",
    "FineTuned",
    "FrozenProjection",
    "ImageCNN",
    "NumericMLP",
    "TextRNN",
    "Tokens",
    "build_encoder",
]
