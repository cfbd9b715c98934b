"""The network: one encoder per input -> fusion -> task head. Pure `nn.Module`, no training logic."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from polymodal.data.schema import Modality
from polymodal.encoders import build_encoder
from polymodal.fusion import FUSIONS, build_fusion
from polymodal.model.distinct import to_rows, tokens_to_rows
from polymodal.tasks import Task


def module_keys(names: list[str]) -> dict[str, str]:
    """Input name -> a key safe for `nn.ModuleDict` (column names may hold dots or spaces)."""
    return {n: f"i{i}_{re.sub(r'[^0-9A-Za-z_]', '_', n)}" for i, n in enumerate(names)}


def build_encoders(
    inputs: dict[str, Modality],
    input_specs: dict[str, dict[str, Any]],
    embed_dim: int | dict[str, int],
    tokens: bool,
    given: dict[str, nn.Module] | None = None,
) -> tuple[dict[str, str], nn.ModuleDict, dict[str, int]]:
    """One encoder per input: (input name -> module key, the encoders by key, each encoder's output size by key).
    Shared by `MultimodalNet` and the text network, so both save their encoders under the same names. `given`:
    encoders built elsewhere, by input name (readouts, polymodal/model/readout.py)."""
    given = given or {}
    keys = module_keys(list(inputs))
    dims = embed_dim if isinstance(embed_dim, dict) else dict.fromkeys(inputs, embed_dim)
    encoders = nn.ModuleDict(
        {keys[n]: given.get(n) or build_encoder(m, input_specs[n], dims[n], tokens=tokens) for n, m in inputs.items()}
    )
    return keys, encoders, {keys[n]: encoders[keys[n]].dim for n in inputs}


class MultimodalNet(nn.Module):
    distinct_inputs = True  # forward takes `index` (batches of distinct items, model/distinct.py)

    def __init__(
        self,
        inputs: dict[str, Modality],
        input_specs: dict[str, dict[str, Any]],
        task: Task,
        fusion: str = "attention",
        embed_dim: int | dict[str, int] = 128,
        hidden: int = 128,
        dropout: float = 0.1,
        fusion_options: dict[str, Any] | None = None,
        encoders: dict[str, nn.Module] | None = None,
    ):
        """`embed_dim`: one size for every encoder, or {input name: size}; `fusion_options`: the fusion's own;
        `encoders`: encoders built elsewhere, by input name (`build_encoders`' `given`)."""
        super().__init__()
        self.input_names = list(inputs)
        # A token-level fusion reads each encoder's tokens (`forward_tokens`) instead of its pooled embedding.
        self.tokens = bool(getattr(FUSIONS.get(fusion), "consumes_tokens", False))
        self.keys, self.encoders, dims = build_encoders(inputs, input_specs, embed_dim, self.tokens, encoders)
        options = fusion_options or {}
        self.fusion = build_fusion(fusion, dims, task.n_outputs, hidden=hidden, dropout=dropout, **options)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Identity() if self.fusion.produces_logits else task.head(self.fusion.out_dim, hidden, dropout)

    def forward(
        self, inputs: dict[str, torch.Tensor], present: torch.Tensor, index: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """`index`: for inputs given as a batch's distinct items, each row's item (model/distinct.py): the encoder
        runs once per item, its output is gathered to the rows (dropout after, per row as without an index)."""
        index = index or {}
        if self.tokens:
            tokens = {
                self.keys[n]: tokens_to_rows(self.encoders[self.keys[n]].forward_tokens(inputs[n]), index.get(n)).map(
                    self.dropout
                )
                for n in self.input_names
            }
            return self.head(self.fusion(tokens, present))
        embeddings = {
            self.keys[n]: self.dropout(to_rows(self.encoders[self.keys[n]](inputs[n]), index.get(n)))
            for n in self.input_names
        }
        return self.head(self.fusion(embeddings, present))
