"""The fusion contract.

A fusion module is built from `{input name: embedding dim}` and the number of task outputs. Its forward takes
a dict of embeddings `(batch, dim)` and `present`, a boolean `(batch, n_inputs)` mask in the order of `dims`,
and returns one tensor `(batch, out_dim)`. An absent input must never be read as data: each fusion uses the
mask (a learned missing embedding, masked attention, renormalized weights).
When `produces_logits` is True the output already is the task's logits and the task head is the identity.
"""

from __future__ import annotations

import torch
from torch import nn


class Fusion(nn.Module):
    produces_logits: bool = False

    def __init__(self, dims: dict[str, int], n_outputs: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.names = list(dims)
        self.dims = dict(dims)
        self.n_outputs = n_outputs
        self.out_dim = 0

    def forward(self, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
