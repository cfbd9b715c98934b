"""Training settings. Kept apart from the Lightning code so that loading a model for inference never imports it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

RUN_ONLY = ("checkpoint_dir", "restart")


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
    # A folder for the checkpoint written after each epoch: a run killed at any moment resumes from it when the
    # same training is run again (None: no checkpoint). The CLI uses a hidden sibling of the output folder.
    checkpoint_dir: str | None = None
    restart: bool = False  # ignore (and replace) a checkpoint found in checkpoint_dir instead of resuming from it

    def to_dict(self) -> dict[str, Any]:
        # Where this run keeps its checkpoint is not a setting of the model: not saved with it.
        return {k: v for k, v in asdict(self).items() if k not in RUN_ONLY}
