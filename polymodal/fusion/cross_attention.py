"""Cross-modal attention: each input's token attends to the tokens of the *other* inputs (never to itself),
so every modality is re-expressed in terms of the rest; then a feed-forward block, and a mean over the tokens
of the inputs present.

Absent inputs are masked out as keys and left out of the mean. A token with no other input present gets no
attention update (its residual passes through); a row with nothing present returns a learned 'empty' vector."""

from __future__ import annotations

import torch
from torch import nn

from polymodal.fusion.base import Fusion
from polymodal.fusion.blocks import typed_projections


class CrossModalLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            heads = 1
        self.heads = heads
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.q, self.kv, self.out = nn.Linear(hidden, hidden), nn.Linear(hidden, 2 * hidden), nn.Linear(hidden, hidden)
        self.ff = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(2 * hidden, hidden)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x (b, n, h); allowed (b, n, n): query i may attend to key j."""
        b, n, h = x.shape
        d = h // self.heads
        q = self.q(self.norm_q(x)).view(b, n, self.heads, d).transpose(1, 2)
        k, v = self.kv(self.norm_kv(x)).view(b, n, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / d**0.5  # (b, heads, n, n)
        # Mask only rows that have some key: a fully masked row would softmax to NaN (and NaN gradients).
        has_key = allowed.any(dim=-1, keepdim=True)  # (b, n, 1)
        mask = (allowed | ~has_key)[:, None]
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) * has_key[:, None].to(x.dtype)
        attended = (weights @ v).transpose(1, 2).reshape(b, n, h)
        x = x + self.drop(self.out(attended))
        return x + self.drop(self.ff(self.norm_ff(x)))


class CrossAttentionFusion(Fusion):
    def __init__(
        self,
        dims: dict[str, int],
        n_outputs: int,
        hidden: int = 128,
        dropout: float = 0.1,
        layers: int = 1,
        heads: int = 4,
    ):
        super().__init__(dims, n_outputs, hidden, dropout)
        self.proj, self.type_embed = typed_projections(dims, hidden)
        self.layers = nn.ModuleList(CrossModalLayer(hidden, heads, dropout) for _ in range(layers))
        self.empty = nn.Parameter(torch.zeros(hidden))
        self.norm = nn.LayerNorm(hidden)
        self.out_dim = hidden

    def forward(self, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        # Absent slots are zeroed before projection; masking below keeps them out of every output anyway.
        x = torch.stack(
            [
                self.proj[k](torch.where(present[:, i, None], embeddings[k], torch.zeros_like(embeddings[k])))
                for i, k in enumerate(self.names)
            ],
            dim=1,
        )
        x = x + self.type_embed.to(x.dtype)
        n = len(self.names)
        others = ~torch.eye(n, dtype=torch.bool, device=present.device)
        allowed = present[:, None, :] & others[None]  # key j present and j != i
        for layer in self.layers:
            x = layer(x, allowed)
        count = present.sum(dim=1, keepdim=True)
        pooled = torch.where(present[:, :, None], x, torch.zeros_like(x)).sum(dim=1) / count.clamp(min=1).to(x.dtype)
        pooled = torch.where(count > 0, pooled, self.empty.to(x.dtype))
        return self.norm(pooled)
