"""The fusion contracts.

Pooled (`Fusion`): a fusion module is built from `{input name: embedding dim}` and the number of task outputs.
Its forward takes a dict of embeddings `(batch, dim)` and `present`, a boolean `(batch, n_inputs)` mask in the
order of `dims`, and returns one tensor `(batch, out_dim)`. An absent input must never be read as data: each
fusion uses the mask (a learned missing embedding, masked attention, renormalized weights).
When `produces_logits` is True the output already is the task's logits and the task head is the identity.

Token-level (`TokenFusion`, `consumes_tokens = True`): built the same way, but its forward takes a dict of
`Tokens` (polymodal/encoders/tokens.py: tokens `(batch, n, dim)`, a mask of the real tokens, the pooled
embedding, and for image regions their (x, y) and grid) and `present`, and returns one vector `(batch, out_dim)`.
The network then asks its encoders for `forward_tokens`. Two rules: a padding token (mask False) never changes
the output, and an absent input's tokens count as all padding (`input_masks` gives the combined mask and
`masked` zeroes what must not be read).
"""

from __future__ import annotations

import torch
from torch import nn

from polymodal.encoders.tokens import Tokens
from polymodal.fusion.blocks import projections


class Fusion(nn.Module):
    produces_logits: bool = False
    consumes_tokens: bool = False

    def __init__(self, dims: dict[str, int], n_outputs: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.names = list(dims)
        self.dims = dict(dims)
        self.n_outputs = n_outputs
        self.out_dim = 0

    def forward(self, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TokenFusion(Fusion):
    """Base of the token-level fusions: tokens and masks per input in, one fused vector out.

    Which inputs are spatial (image regions with coordinates) is read from the `Tokens` at run time, so one
    fusion serves any mix of columns. Helpers shared by the fusions live here.
    """

    consumes_tokens = True

    def __init__(self, dims: dict[str, int], n_outputs: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__(dims, n_outputs, hidden, dropout)
        # The pooled embedding of each input, projected, is what conditions on "the question" (the other inputs).
        self.cond_proj = projections(dims, hidden)
        self.hidden = hidden

    def forward(self, tokens: dict[str, Tokens], present: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        raise NotImplementedError

    def input_masks(self, tokens: dict[str, Tokens], present: torch.Tensor) -> dict[str, torch.Tensor]:
        """(batch, n) per input: a real token of an input present in the row."""
        return {k: tokens[k].mask & present[:, i, None] for i, k in enumerate(self.names)}

    @staticmethod
    def masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Zero the tokens that are padding or absent, so no later operation can read them."""
        return torch.where(mask[..., None], x, torch.zeros_like(x))

    def condition(self, tokens: dict[str, Tokens], present: torch.Tensor, names: list[str]) -> torch.Tensor:
        """(batch, hidden): the mean of the projected pooled embeddings of `names` present in each row (zero when
        none is); an absent input's pooled embedding is never read."""
        b = present.shape[0]
        total = torch.zeros(b, self.hidden, device=present.device)
        count = torch.zeros(b, 1, device=present.device)
        for i, k in enumerate(self.names):
            if k in names:
                p = present[:, i, None]
                z = self.cond_proj[k](tokens[k].pooled)
                total = total + torch.where(p, z, torch.zeros_like(z))
                count = count + p.to(total.dtype)
        return total / count.clamp(min=1)

    def split(self, tokens: dict[str, Tokens]) -> tuple[list[str], list[str]]:
        """(spatial inputs, the others): image-region grids vs words, frames and single tokens."""
        spatial = [k for k in self.names if tokens[k].coords is not None]
        return spatial, [k for k in self.names if k not in spatial]
