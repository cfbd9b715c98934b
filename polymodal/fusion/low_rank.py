"""Low-rank multimodal fusion (Liu et al., 2018): the weight of tensor fusion factorized into `rank` factors per
input, so the outer product is never built. Each input (projected, with a 1 appended) is multiplied by its
factors; the results are multiplied elementwise across inputs and summed over the rank.

An absent input is [0, ..., 0, 1], exactly as in tensor fusion: its factor reduces to a learned constant and
what the absent slot holds is never read."""

from __future__ import annotations

import torch
from torch import nn

from polymodal.fusion.base import Fusion
from polymodal.fusion.blocks import projections


class LowRankFusion(Fusion):
    def __init__(
        self,
        dims: dict[str, int],
        n_outputs: int,
        hidden: int = 128,
        dropout: float = 0.1,
        rank: int = 4,
    ):
        super().__init__(dims, n_outputs, hidden, dropout)
        self.proj = projections(dims, hidden, lambda: [nn.ReLU(inplace=True), nn.Dropout(dropout)])
        self.factors = nn.ParameterDict({k: nn.Parameter(torch.empty(rank, hidden + 1, hidden)) for k in dims})
        for f in self.factors.values():
            nn.init.xavier_normal_(f)
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(hidden))
        # The product of n factors can drift far from unit scale; normalizing keeps the head's input stable.
        self.norm = nn.LayerNorm(hidden)
        self.out_dim = hidden

    def forward(self, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        fused: torch.Tensor | None = None
        for i, k in enumerate(self.names):
            z = self.proj[k](embeddings[k])
            z = torch.where(present[:, i, None], z, torch.zeros_like(z))
            z = torch.cat([z, torch.ones_like(z[:, :1])], dim=-1)  # (b, hidden + 1)
            f = torch.einsum("bd,rdh->brh", z, self.factors[k].to(z.dtype))
            fused = f if fused is None else fused * f
        out = torch.einsum("brh,r->bh", fused, self.rank_weights.to(fused.dtype)) + self.bias.to(fused.dtype)
        return self.norm(out)
