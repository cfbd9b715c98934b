"""Cross-modal transformer over tokens (ViLT-style): [CLS] + the tokens of every input, each token with its
input's type embedding and a position embedding (a learned table over sequence positions for words and
frames, a projection of (x, y) for image regions), through a transformer encoder; the output is [CLS].

Padding tokens and every token of an absent input are masked out as keys, so they cannot change [CLS]."""

from __future__ import annotations

import torch
from torch import nn

from polymodal.encoders.tokens import Tokens
from polymodal.fusion.base import TokenFusion
from polymodal.fusion.blocks import cls_encoder, typed_projections


class TokenTransformerFusion(TokenFusion):
    def __init__(
        self,
        dims: dict[str, int],
        n_outputs: int,
        hidden: int = 128,
        dropout: float = 0.1,
        layers: int = 2,
        heads: int = 4,
        max_positions: int = 512,
    ):
        super().__init__(dims, n_outputs, hidden, dropout)
        self.proj, self.type_embed = typed_projections(dims, hidden)
        self.position = nn.Embedding(max_positions, hidden)
        nn.init.normal_(self.position.weight, std=0.02)
        self.coord = nn.Linear(2, hidden)
        self.cls, self.encoder = cls_encoder(hidden, heads, layers, dropout)
        self.norm = nn.LayerNorm(hidden)
        self.max_positions = max_positions
        self.out_dim = hidden

    def forward(self, tokens: dict[str, Tokens], present: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        masks = self.input_masks(tokens, present)
        seqs, keep = [], []
        for i, k in enumerate(self.names):
            t = tokens[k]
            n = t.tokens.shape[1]
            if t.coords is not None:
                pos = self.coord(t.coords.to(t.tokens.dtype))
            else:
                pos = self.position(torch.arange(n, device=t.tokens.device).clamp(max=self.max_positions - 1))
            seqs.append(self.masked(self.proj[k](t.tokens) + self.type_embed[i] + pos, masks[k]))
            keep.append(masks[k])
        x = torch.cat(seqs, dim=1)
        b = x.shape[0]
        x = torch.cat([self.cls.expand(b, -1, -1).to(x.dtype), x], dim=1)
        ignore = ~torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), *keep], dim=1)
        return self.norm(self.encoder(x, src_key_padding_mask=ignore)[:, 0])
