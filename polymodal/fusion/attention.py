"""Attention fusion: one token per input plus a CLS token through a small transformer encoder.
Absent inputs are masked out of attention, so they cannot influence the CLS output."""

from __future__ import annotations

import torch
from torch import nn

from polymodal.fusion.base import Fusion
from polymodal.fusion.blocks import cls_encoder, typed_projections


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
        self.proj, self.type_embed = typed_projections(dims, hidden)
        self.cls, self.encoder = cls_encoder(hidden, heads, layers, dropout)
        self.norm = nn.LayerNorm(hidden)
        self.out_dim = hidden

    def forward(self, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        tokens = torch.stack([self.proj[k](embeddings[k]) for k in self.names], dim=1) + self.type_embed
        b = tokens.shape[0]
        x = torch.cat([self.cls.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
        ignore = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=present.device), ~present], dim=1)
        return self.norm(self.encoder(x, src_key_padding_mask=ignore)[:, 0])
