"""Encoders: one `nn.Module` per fusion input, each with `.dim` and `forward(x) -> (batch, dim)`."""

from __future__ import annotations

from typing import Any

from torch import nn

from polymodal.data.schema import Modality
from polymodal.encoders.scratch import AudioCNN, CategoricalMLP, ImageCNN, NumericMLP, TextRNN

SCRATCH_ENCODERS: dict[Modality, type[nn.Module]] = {
    Modality.TEXT: TextRNN,
    Modality.IMAGE: ImageCNN,
    Modality.AUDIO: AudioCNN,
    Modality.NUMERIC: NumericMLP,
    Modality.CATEGORICAL: CategoricalMLP,
}


def build_encoder(modality: Modality, input_spec: dict[str, Any], dim: int) -> nn.Module:
    """Build the scratch encoder for a modality from the preprocessor's description of its input."""
    return SCRATCH_ENCODERS[modality](**input_spec, dim=dim)


__all__ = [
    "AudioCNN",
    "CategoricalMLP",
    "ImageCNN",
    "NumericMLP",
    "TextRNN",
    "build_encoder",
    "SCRATCH_ENCODERS",
]
