"""FiLM (Perez et al., 2018): the question's embedding produces a per-channel scale and shift for every
residual block of a small CNN over the image's region-token grid (the image encoder's last feature map), so
words decide which visual features pass; then a 1x1 conv and a max-pool over the grid.

The conditioning is the mean of the pooled embeddings of the non-spatial inputs present (the question); every
spatial input (an image column with a grid of regions) runs through the same FiLM-ed blocks, and their pooled
vectors are averaged over the ones present. A row with no image present returns the projected question.
Coordinate maps (x, y) are appended to each block's input, as in the paper. An absent image's grid is zeroed
before the blocks and left out of the average, so nothing it holds is read."""

from __future__ import annotations

import torch
from torch import nn

from polymodal.encoders.tokens import Tokens
from polymodal.fusion.base import TokenFusion
from polymodal.fusion.blocks import projections


class FiLMBlock(nn.Module):
    """1x1 conv -> ReLU -> 3x3 conv -> BatchNorm (no affine) -> FiLM -> ReLU, plus the residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels + 2, channels, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(channels, affine=False)

    def forward(self, x: torch.Tensor, xy: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(torch.cat([x, xy], dim=1)))
        y = self._norm(self.conv2(h)) * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        return h + torch.relu(y)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not torch.jit.is_tracing():
            return self.norm(x)
        # The ONNX export traces in eval mode, where the norm is this fixed affine map. Spelled out, because the
        # exporter's BatchNormalization needs a channel count that the FiLM-ed residual's trace no longer carries.
        n = self.norm
        return (x - n.running_mean[None, :, None, None]) * torch.rsqrt(n.running_var + n.eps)[None, :, None, None]


class FiLMFusion(TokenFusion):
    def __init__(
        self,
        dims: dict[str, int],
        n_outputs: int,
        hidden: int = 128,
        dropout: float = 0.1,
        blocks: int = 3,
    ):
        super().__init__(dims, n_outputs, hidden, dropout)
        self.inp = projections(dims, hidden)
        self.blocks = nn.ModuleList(FiLMBlock(hidden) for _ in range(blocks))
        self.film = nn.Linear(hidden, 2 * blocks * hidden)
        self.out = nn.Sequential(nn.Conv2d(hidden + 2, hidden, 1), nn.ReLU(inplace=True))
        self.question = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.out_dim = hidden

    def forward(self, tokens: dict[str, Tokens], present: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        masks = self.input_masks(tokens, present)
        grids = [k for k in self.names if tokens[k].grid is not None]
        q = self.condition(tokens, present, [k for k in self.names if k not in grids])
        gammas, betas = self.film(q).view(q.shape[0], len(self.blocks), 2, self.hidden).unbind(2)
        total = torch.zeros(q.shape[0], self.hidden, device=q.device)
        count = torch.zeros(q.shape[0], 1, device=q.device)
        for k in grids:
            t = tokens[k]
            h, w = t.grid  # type: ignore[misc]
            b = t.tokens.shape[0]
            x = self.masked(self.inp[k](t.tokens), masks[k]).transpose(1, 2).reshape(b, self.hidden, h, w)
            xy = t.coords.T.reshape(1, 2, h, w).expand(b, -1, -1, -1).to(x.dtype)  # type: ignore[union-attr]
            for i, block in enumerate(self.blocks):
                x = block(x, xy, gammas[:, i], betas[:, i])
            pooled = self.out(torch.cat([x, xy], dim=1)).flatten(2).max(dim=2).values
            here = present[:, self.names.index(k), None]
            total = total + torch.where(here, pooled, torch.zeros_like(pooled))
            count = count + here.to(total.dtype)
        return torch.where(count > 0, total / count.clamp(min=1), self.question(q))
