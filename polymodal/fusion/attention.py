"""Attention fusion: one token per input plus a CLS token through a small transformer encoder.
Absent inputs are masked out of attention, so they cannot influence the CLS output."""

from __future__ import annotations

import torch
from torch import nn

from polymodal.fusion.base import Fusion


class AttentionFusion(Fusion):
    def __init__(
        self,
        dims: dict[str, int],
        n_outputs: int,
        hidden: int = 128,
        dropout: float = 0.1,
        layers: int = 2,
        heads: int = 4,
    ):
        super().__init__(dims, n_outputs, hidden, dropout)
        self.proj = nn.ModuleDict({k: nn.Linear(d, hidden) for k, d in dims.items()})
        self.type_embed = nn.Parameter(torch.randn(len(dims), hidden) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=2 * hidden, dropout=dropout, batch_first=True, norm_first=True
        )
        # No nested-tensor fast path: it changes numerics between masked and unmasked batches.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.out_dim = hidden

    def forward(self, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        tokens = torch.stack([self.proj[k](embeddings[k]) for k in self.names], dim=1) + self.type_embed
        b = tokens.shape[0]
        x = torch.cat([self.cls.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
        ignore = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=present.device), ~present], dim=1)
        return self.norm(self.encoder(x, src_key_padding_mask=ignore)[:, 0])
