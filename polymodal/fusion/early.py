"""Early fusion: concatenate the embeddings; an absent input contributes a learned 'missing' vector, not zeros."""

from __future__ import annotations

import torch
from torch import nn

from polymodal.fusion.base import Fusion


class EarlyFusion(Fusion):
    def __init__(self, dims: dict[str, int], n_outputs: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__(dims, n_outputs, hidden, dropout)
        self.missing = nn.ParameterDict({k: nn.Parameter(torch.zeros(d)) for k, d in dims.items()})
        self.out_dim = sum(dims.values())

    def forward(self, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        parts = [
            torch.where(present[:, i, None], embeddings[k], self.missing[k].to(embeddings[k].dtype))
            for i, k in enumerate(self.names)
        ]
        return torch.cat(parts, dim=-1)
