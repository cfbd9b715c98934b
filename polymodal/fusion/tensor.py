"""Tensor fusion (Zadeh et al., 2017): the outer product of the inputs' vectors, each with a 1 appended, so the
product holds every unimodal, bimodal, ... up to n-modal interaction; then an MLP.

Each input is first projected to a small size so the product stays under `max_product` dimensions. An absent
input is the vector [0, ..., 0, 1]: its factor keeps only the constant 1, so the product reduces exactly to the
interactions of the inputs that are present, and nothing the absent slot holds is read."""

from __future__ import annotations

import math

import torch
from torch import nn

from polymodal.fusion.base import Fusion
from polymodal.fusion.blocks import projections


def factor_size(n_inputs: int, max_product: int, max_size: int = 32) -> int:
    """Projection size d per input such that (d + 1) ** n_inputs <= max_product (at least 1)."""
    per_input = int(math.floor(max_product ** (1.0 / n_inputs) + 1e-9))
    return max(1, min(max_size, per_input - 1))


class TensorFusion(Fusion):
    def __init__(
        self,
        dims: dict[str, int],
        n_outputs: int,
        hidden: int = 128,
        dropout: float = 0.1,
        max_product: int = 4096,
    ):
        super().__init__(dims, n_outputs, hidden, dropout)
        self.factor = factor_size(len(dims), max_product)
        self.proj = projections(dims, self.factor)
        self.product_dim = (self.factor + 1) ** len(dims)
        self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.product_dim, hidden), nn.ReLU(inplace=True))
        self.out_dim = hidden

    def forward(self, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        product: torch.Tensor | None = None
        for i, k in enumerate(self.names):
            z = self.proj[k](embeddings[k])
            z = torch.where(present[:, i, None], z, torch.zeros_like(z))
            z = torch.cat([z, torch.ones_like(z[:, :1])], dim=-1)  # (b, factor + 1)
            product = z if product is None else (product.unsqueeze(-1) * z.unsqueeze(1)).flatten(1)
        return self.mlp(product)
