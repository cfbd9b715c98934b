"""Training settings live in the config tree (`polymodal.config`); kept importable from here."""

from polymodal.config import TrainConfig

__all__ = ["TrainConfig"]
