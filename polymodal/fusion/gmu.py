"""Gated multimodal unit (Arevalo et al., 2017): each input becomes a candidate vector tanh(W_i x_i); a gate
computed from all inputs together decides, per dimension, how much of each candidate goes into the output.

The gate is a softmax over the inputs present in the row (an absent input gets weight 0), and an absent input
enters the gate's own input as a learned 'missing' vector, so nothing it holds is ever read."""

from __future__ import annotations

import torch
from torch import nn

from polymodal.fusion.base import Fusion
from polymodal.fusion.blocks import projections


class GMUFusion(Fusion):
    def __init__(self, dims: dict[str, int], n_outputs: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__(dims, n_outputs, hidden, dropout)
        self.candidates = projections(dims, hidden, lambda: [nn.Tanh()])
        self.missing = nn.ParameterDict({k: nn.Parameter(torch.zeros(d)) for k, d in dims.items()})
        self.gate = nn.Linear(sum(dims.values()), len(dims) * hidden)
        self.out_dim = hidden

    def forward(self, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        x = {
            k: torch.where(present[:, i, None], embeddings[k], self.missing[k].to(embeddings[k].dtype))
            for i, k in enumerate(self.names)
        }
        h = torch.stack([self.candidates[k](x[k]) for k in self.names], dim=1)  # (b, n, hidden)
        gate = self.gate(torch.cat([x[k] for k in self.names], dim=-1)).view(h.shape)
        # Absent inputs are masked out of the softmax; a row with nothing present keeps finite scores and
        # is zeroed afterwards (a softmax over all -inf would be NaN, in the backward pass too).
        any_present = present.any(dim=1)
        mask = present[:, :, None] | ~any_present[:, None, None]
        z = torch.softmax(gate.masked_fill(~mask, float("-inf")), dim=1)
        out = (z * h).sum(dim=1)
        return torch.where(any_present[:, None], out, torch.zeros_like(out))
