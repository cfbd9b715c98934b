"""Training with PyTorch Lightning: `train()` fits a `MultimodalNet` on preprocessed features."""

from polymodal.training.fit import TrainConfig, train

__all__ = ["TrainConfig", "train"]
