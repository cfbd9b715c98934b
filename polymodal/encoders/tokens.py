"""Token outputs of encoders, for token-level fusion.

An encoder built with `tokens=True` also has `forward_tokens(x) -> Tokens`: its sequence of tokens (image
regions, words, audio frames, or one token for a table's numbers/categories) with a mask of the real ones, its
usual pooled embedding, and for a spatial grid of image regions the (x, y) of each token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Tokens:
    tokens: torch.Tensor  # (batch, n, dim)
    mask: torch.Tensor  # (batch, n) bool: True for a real token, False for padding (and, after fusion masking, absence)
    pooled: torch.Tensor  # (batch, dim): the encoder's pooled embedding of the same input
    coords: torch.Tensor | None = None  # (n, 2): (x, y) of each grid token in [-1, 1]; None when not spatial
    grid: tuple[int, int] | None = None  # (height, width) of a spatial grid, tokens in row-major order

    @property
    def spatial(self) -> bool:
        return self.grid is not None

    def map(self, fn) -> Tokens:
        """The same tokens with `fn` applied to the token and pooled tensors (e.g. dropout)."""
        return Tokens(fn(self.tokens), self.mask, fn(self.pooled), self.coords, self.grid)


def grid_coords(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """(h * w, 2) coordinates (x, y) of a row-major grid's cells, each in [-1, 1]."""
    ys = torch.linspace(-1.0, 1.0, h, device=device) if h > 1 else torch.zeros(1, device=device)
    xs = torch.linspace(-1.0, 1.0, w, device=device) if w > 1 else torch.zeros(1, device=device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=-1)


def single_token(pooled: torch.Tensor) -> Tokens:
    """An input with no sequence (numbers, categories, a cached pooled embedding) as one real token."""
    return Tokens(pooled.unsqueeze(1), torch.ones(pooled.shape[0], 1, dtype=torch.bool, device=pooled.device), pooled)
