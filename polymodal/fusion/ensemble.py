"""Late ensembling of separately trained unimodal models: average, or learned stacking, of their outputs.

Behind the fusion contract, each 'embedding' is one unimodal model's output for the row: class probabilities
`(batch, n_classes)`, or for regression its standardized prediction `(batch, 1)`. The result is logits (log of
the averaged probabilities, or the stacking model's logits), or the standardized prediction for regression.

- `average`: the mean over the members present in the row; a row with none present gets `prior`.
- `stack`: a linear model over all members' outputs (fitted elsewhere, e.g. scikit-learn's LogisticRegression
  on validation-set probabilities, then loaded with `set_linear`); an absent member's output is replaced by
  `impute`, its mean output on the stacking data, so the absent slot is never read.

Not in `FUSIONS`: its members are trained separately (see polymodal/evaluation/ensemble.py), not end to end.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from polymodal.fusion.base import Fusion

MODES = ("average", "stack")


class ProbabilityEnsemble(Fusion):
    produces_logits = True

    def __init__(
        self,
        dims: dict[str, int],
        n_outputs: int,
        hidden: int = 0,
        dropout: float = 0.0,
        mode: str = "average",
        classification: bool = True,
    ):
        super().__init__(dims, n_outputs, hidden, dropout)
        if mode not in MODES:
            raise ValueError(f"unknown ensemble mode {mode!r}; choose one of {list(MODES)}")
        if any(d != n_outputs for d in dims.values()):
            raise ValueError(f"every member must output {n_outputs} values, got {dims}")
        self.mode, self.classification = mode, classification
        prior = torch.full((n_outputs,), 1.0 / n_outputs) if classification else torch.zeros(n_outputs)
        self.register_buffer("prior", prior)
        self.register_buffer("impute", prior.repeat(len(dims), 1))  # (n_members, n_outputs)
        self.linear = nn.Linear(len(dims) * n_outputs, n_outputs)
        self.out_dim = n_outputs

    @torch.no_grad()
    def set_linear(self, weight: np.ndarray, bias: np.ndarray, impute: np.ndarray) -> None:
        """Load a fitted stacking model: weight (n_outputs, n_members * n_outputs), bias (n_outputs,)."""
        self.linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        self.linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        self.impute.copy_(torch.as_tensor(impute, dtype=torch.float32).reshape(self.impute.shape))

    def forward(self, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        x = torch.stack([embeddings[k] for k in self.names], dim=1)  # (b, n_members, n_outputs)
        if self.mode == "stack":
            filled = torch.where(present[:, :, None], x, self.impute.to(x.dtype))
            return self.linear(filled.flatten(1))
        w = present.to(x.dtype)
        count = w.sum(dim=1, keepdim=True)
        mean = (torch.where(present[:, :, None], x, torch.zeros_like(x)) * w[:, :, None]).sum(dim=1)
        mean = torch.where(count > 0, mean / count.clamp(min=1), self.prior.to(x.dtype))
        return torch.log(mean.clamp(min=1e-7)) if self.classification else mean
