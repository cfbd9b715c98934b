"""The aligned network: per column, the polymodal encoder of that column plus a projection into one shared,
L2-normalized space, and a learned temperature. Pure `nn.Module`, no training logic."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.data.schema import Modality
from polymodal.encoders import build_encoder
from polymodal.model.network import module_keys

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's cap on 1 / temperature


class AlignNet(nn.Module):
    def __init__(
        self,
        inputs: dict[str, Modality],
        input_specs: dict[str, dict[str, Any]],
        embed_dim: int | dict[str, int] = 128,  # each encoder's output size (one for all, or per input)
        dim: int = 64,
        hidden: int = 256,
        dropout: float = 0.1,
        temperature: float = 0.07,
    ):
        super().__init__()
        self.input_names = list(inputs)
        self.keys = module_keys(self.input_names)
        self.dim = dim
        dims = embed_dim if isinstance(embed_dim, dict) else dict.fromkeys(inputs, embed_dim)
        self.encoders = nn.ModuleDict(
            {self.keys[n]: build_encoder(m, input_specs[n], dims[n]) for n, m in inputs.items()}
        )
        self.projections = nn.ModuleDict(
            {
                k: nn.Sequential(nn.Dropout(dropout), nn.Linear(enc.dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
                for k, enc in self.encoders.items()
            }
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def embed(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """(batch, ...) inputs of column `name` -> (batch, dim) unit vectors in the shared space."""
        key = self.keys[name]
        return F.normalize(self.projections[key](self.encoders[key](x)), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(0.0, MAX_LOGIT_SCALE).exp()


def contrastive_loss(
    a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of `a` and `b` with in-batch negatives.

    With `labels`, every pair of rows that share a label is a positive (supervised contrastive): each row's loss
    is the mean negative log-probability of its positives."""
    logits = scale * a @ b.T
    if labels is None:
        target = torch.arange(len(a), device=a.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    pos = (labels[:, None] == labels[None, :]).float()

    def one_way(lg: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(lg, dim=1)
        return -((logp * pos).sum(1) / pos.sum(1)).mean()

    return 0.5 * (one_way(logits) + one_way(logits.T))
