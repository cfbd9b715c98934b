"""Relation network (Santoro et al., 2017): an MLP g reads every pair of objects (region tokens with their
(x, y)) together with the question, the pair outputs are summed, and an MLP f reads the result. (A sum, not
a mean: when two objects of many matter, a mean over all pairs dilutes them and training stalls.)

Objects are the tokens of the spatial inputs (image region grids); the question is the mean of the other
inputs' pooled embeddings. With no spatial input at all, every input's tokens are objects. A pair with a
padding or absent token contributes exactly nothing; a row with no object at all gets f(g of nothing) = f(0).
g's first layer is linear in (o_i, o_j, q), so it is computed per object and broadcast over the pairs: the
(batch, n, n, hidden) tensor is built once, not n^2 concatenations."""

from __future__ import annotations

import torch
from torch import nn

from polymodal.encoders.tokens import Tokens
from polymodal.fusion.base import TokenFusion
from polymodal.fusion.blocks import projections


class RelationFusion(TokenFusion):
    def __init__(
        self,
        dims: dict[str, int],
        n_outputs: int,
        hidden: int = 128,
        dropout: float = 0.1,
        g_layers: int = 3,
    ):
        super().__init__(dims, n_outputs, hidden, dropout)
        # Normalized objects and question: g starts with well-scaled inputs whatever the encoders output.
        self.obj = projections(dims, hidden, lambda: [nn.LayerNorm(hidden)])
        self.q_norm = nn.LayerNorm(hidden)
        self.g_left, self.g_right = nn.Linear(hidden + 2, hidden), nn.Linear(hidden + 2, hidden, bias=False)
        self.g_question = nn.Linear(hidden, hidden, bias=False)
        rest: list[nn.Module] = [nn.ReLU(inplace=True)]
        for _ in range(g_layers - 1):
            rest += [nn.Linear(hidden, hidden), nn.ReLU(inplace=True)]
        self.g = nn.Sequential(*rest)
        self.f = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.out_dim = hidden

    def forward(self, tokens: dict[str, Tokens], present: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        masks = self.input_masks(tokens, present)
        spatial, others = self.split(tokens)
        objects = spatial or self.names
        parts, part_masks = [], []
        for k in objects:
            t = tokens[k]
            b, n, _ = t.tokens.shape
            xy = t.coords if t.coords is not None else torch.zeros(n, 2, device=t.tokens.device)
            o = torch.cat([self.obj[k](t.tokens), xy.to(t.tokens.dtype).expand(b, -1, -1)], dim=-1)
            parts.append(self.masked(o, masks[k]))
            part_masks.append(masks[k])
        o, mask = torch.cat(parts, dim=1), torch.cat(part_masks, dim=1)  # (b, n, hidden + 2), (b, n)
        q = self.condition(tokens, present, others if spatial else [])
        pre = self.g_left(o)[:, :, None] + self.g_right(o)[:, None, :] + self.g_question(self.q_norm(q))[:, None, None]
        pair = (mask[:, :, None] & mask[:, None, :]).to(pre.dtype)  # (b, n, n)
        g = self.g(pre) * pair[..., None]
        return self.f(g.sum(dim=(1, 2)))
