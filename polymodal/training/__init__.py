"""Training with PyTorch Lightning: `train()` fits a `MultimodalNet` on preprocessed features.

`train` is imported on first use, so `TrainConfig` (needed to load a model) does not pull in Lightning.
"""

from __future__ import annotations

from typing import Any

from polymodal.training.config import TrainConfig


def __getattr__(name: str) -> Any:
    if name == "train":
        from polymodal.training.fit import train

        return train
    raise AttributeError(name)


__all__ = ["TrainConfig", "train"]
