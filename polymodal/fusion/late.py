"""Late fusion: one small head per input predicts the task on its own; their logits are averaged with learned
weights, renormalized over the inputs present in each row (an absent input gets weight 0)."""

from __future__ import annotations

import torch
from torch import nn

from polymodal.fusion.base import Fusion


class LateFusion(Fusion):
    produces_logits = True

    def __init__(self, dims: dict[str, int], n_outputs: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__(dims, n_outputs, hidden, dropout)
        self.heads = nn.ModuleDict(
            {
                k: nn.Sequential(
                    nn.Linear(d, hidden),
                    nn.ReLU(inplace=True),
                    nn.Dropout(dropout),
                    nn.Linear(hidden, n_outputs),
                )
                for k, d in dims.items()
            }
        )
        self.weight_logits = nn.Parameter(torch.zeros(len(dims)))
        self.prior = nn.Parameter(torch.zeros(n_outputs))  # the answer for a row with no input at all
        self.out_dim = n_outputs

    def input_weights(self, present: torch.Tensor) -> torch.Tensor:
        """(batch, n_inputs) weights summing to 1 over the present inputs of each row."""
        w = self.weight_logits.expand(present.shape[0], -1).masked_fill(~present, float("-inf"))
        # A row with nothing present would be all -inf (NaN after softmax); it gets zero weights instead.
        return torch.nan_to_num(torch.softmax(w, dim=1), nan=0.0)

    def forward(self, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([self.heads[k](embeddings[k]) for k in self.names], dim=1)  # (b, n_inputs, out)
        w = self.input_weights(present).to(logits.dtype)
        combined = (w.unsqueeze(-1) * logits).sum(dim=1)
        return torch.where(present.any(dim=1, keepdim=True), combined, self.prior.to(logits.dtype))
