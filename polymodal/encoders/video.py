"""The encoder of a video's frames: an image encoder on every frame, then a temporal model over them.

The per-frame stage (`encoders.video.frames`): the scratch image CNN; or a pretrained image encoder on each frame or
a pretrained video model (VideoMAE, TimeSformer) on the clip (polymodal/encoders/video_pretrained.py), either
fine-tuned inside this module or frozen, when the input already is its cached vectors, one per time step
(`in_dim`), projected here. The temporal model then reads one vector per time step whatever made them.

Temporal models (`encoders.video.temporal`):
- mean: the frames' embeddings averaged; blind to their order (the baseline that tells what order is worth);
- gru: a bidirectional GRU over the frames; pooled from its last states in both directions;
- transformer: self-attention over the frames with learned positions; pooled by the mean of its outputs.

The frames arrive as uint8 (batch, frames, 3, size, size), or as floats in [0, 1] from the training
augmentation, and are standardized here with the fitted per-channel statistics, so an exported ONNX graph takes
the decoded uint8 frames. With `tokens=True`, `forward_tokens` gives one token per frame (in time order: the GRU
and the transformer make each token know where it is in the clip).

The sound track of a video is a separate fusion input, encoded by the audio encoder.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from polymodal.encoders.scratch import ImageCNN
from polymodal.encoders.tokens import Tokens

TEMPORAL = ("mean", "gru", "transformer")


class VideoEncoder(nn.Module):
    def __init__(
        self,
        frames: int,
        channels: int = 3,
        size: int = 64,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        dim: int = 128,
        temporal: str = "gru",
        layers: int = 1,
        heads: int = 4,
        widths: tuple[int, ...] = (16, 32, 64),
        tokens: bool = False,
        in_dim: int | None = None,
        pretrained: dict[str, Any] | None = None,
        pixel: dict[str, Any] | None = None,
        finetune_layers: int | None = None,
        lora: bool = False,
        from_config: str | None = None,
    ):
        """`frames`: time steps per clip. Scratch: `channels`, `size`, the fitted pixel `mean` and `std`.
        Frozen pretrained: `in_dim`, the size of the cached vectors. Fine-tuned pretrained: `pretrained` (an
        EncoderRef as dict), `pixel` (its size, mean, std), `finetune_layers`, `lora`, `from_config`."""
        super().__init__()
        if temporal not in TEMPORAL:
            raise ValueError(f"encoders.video.temporal must be one of {TEMPORAL}, not {temporal!r}")
        self.temporal, self.frames, self.dim = temporal, frames, dim
        self.channels, self.size = channels, size
        self.stage = "frozen" if in_dim else "finetune" if pretrained else "scratch"
        if self.stage == "frozen":
            self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim), nn.ReLU(inplace=True))
        elif self.stage == "finetune":
            from polymodal.encoders.video_pretrained import PretrainedFrames

            self.backbone = PretrainedFrames(pretrained, pixel, finetune_layers, lora, from_config)
            self.proj = nn.Sequential(nn.Linear(self.backbone.dim, dim), nn.ReLU(inplace=True))
        else:
            self._scratch(channels, size, mean, std, dim, widths)
        if temporal == "gru":
            self.rnn = nn.GRU(dim, dim, num_layers=layers, batch_first=True, bidirectional=True)
            self.pool_proj = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(inplace=True))
            self.token_proj = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(inplace=True))
        elif temporal == "transformer":
            self.positions = nn.Parameter(torch.randn(1, frames, dim) * 0.02)
            layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.1, batch_first=True, norm_first=True)
            self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)

    def _scratch(self, channels: int, size: int, mean: list[float], std: list[float], dim: int, widths: tuple) -> None:
        # Smaller than an image column's CNN: it runs once per frame.
        self.cnn = ImageCNN(channels, size, dim=dim, widths=tuple(widths))
        # The same average as its adaptive pooling, with a fixed window: ONNX export needs one after the reshape.
        side = size >> sum(isinstance(m, nn.MaxPool2d) for m in self.cnn.features.modules())
        if side % 2 == 0:
            self.cnn.pool = nn.AvgPool2d(side // 2)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def _embed_frames(self, x: torch.Tensor) -> torch.Tensor:
        """(b, t, 3, h, w) uint8 or [0, 1] floats -> (b, t, dim), each frame through the CNN; or the frozen
        encoder's cached vectors (b, t, in_dim) projected; or the fine-tuned pretrained encoder's."""
        if self.stage == "frozen":
            return self.proj(x.float())
        if self.stage == "finetune":
            return self.proj(self.backbone(x))
        b, t = x.shape[:2]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        # Python ints, not the input's shape: an exported graph keeps the frame size it needs for its pooling.
        x = (x.reshape(-1, self.channels, self.size, self.size) - self.mean) / self.std
        return self.cnn(x).view(b, t, -1)

    def _sequence(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-frame outputs (b, t, dim), pooled (b, dim))."""
        f = self._embed_frames(x)
        if self.temporal == "mean":
            return f, f.mean(1)
        if self.temporal == "gru":
            h, last = self.rnn(f)  # last: (layers * 2, b, dim); the top layer's forward and backward states
            return self.token_proj(h), self.pool_proj(torch.cat([last[-2], last[-1]], dim=-1))
        h = self.norm(self.transformer(f + self.positions[:, : f.shape[1]]))
        return h, h.mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._sequence(x)[1]

    def forward_tokens(self, x: torch.Tensor) -> Tokens:
        h, pooled = self._sequence(x)
        mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)  # every kept frame is real
        return Tokens(h, mask, pooled)
