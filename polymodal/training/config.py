"""Training settings. Kept apart from the Lightning code so that loading a model for inference never imports it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class TrainConfig:
    max_epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 6
    seed: int = 0
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    precision: str = "32-true"
    modality_dropout: float = 0.0
    augment: bool = True
    progress: bool = True
    encoder_lr: float | None = None  # learning rate of fine-tuned pretrained encoders (default: lr / 10)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
