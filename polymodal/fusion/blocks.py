"""Building blocks shared by the fusion constructors (not fusions themselves).

Each returns modules for the caller to assign under its own attribute names, so the parameter names in a saved
model's state dict stay those of the fusion (`proj.<input>.weight`, `type_embed`, `cls`, `encoder.layers.0...`).
Parameters are created in the order a fusion built them inline, so the same seed gives the same initial weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def projections(dims: dict[str, int], size: int, then: Callable[[], list[nn.Module]] | None = None) -> nn.ModuleDict:
    """One `Linear(dim, size)` per input; with `then`, a `Sequential` of that Linear and the fresh modules `then()`
    returns (e.g. an activation and dropout), built once per input."""
    return nn.ModuleDict(
        {k: nn.Sequential(nn.Linear(d, size), *then()) if then else nn.Linear(d, size) for k, d in dims.items()}
    )


def typed_projections(dims: dict[str, int], hidden: int) -> tuple[nn.ModuleDict, nn.Parameter]:
    """The token in of the transformer-style fusions: a projection per input to `hidden`, and a learned type
    embedding per input `(n_inputs, hidden)`, added so attention can tell the inputs apart."""
    return projections(dims, hidden), nn.Parameter(torch.randn(len(dims), hidden) * 0.02)


def cls_encoder(hidden: int, heads: int, layers: int, dropout: float) -> tuple[nn.Parameter, nn.TransformerEncoder]:
    """A learned [CLS] token `(1, 1, hidden)` and a pre-norm transformer encoder (feed-forward 2 * hidden) whose
    output at [CLS] is the fused vector."""
    cls = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
    layer = nn.TransformerEncoderLayer(
        hidden, heads, dim_feedforward=2 * hidden, dropout=dropout, batch_first=True, norm_first=True
    )
    # No nested-tensor fast path: it changes numerics between masked and unmasked batches.
    return cls, nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
