"""The encoder pass over the distinct items of a batch, scattered back to its rows.

A batch of features stored as distinct items (`polymodal.preprocess.features`) carries `batch["index"]`:
{input: LongTensor[rows]}, each row's position among the input's items in `batch["inputs"][input]`. The encoder
runs on the items only and its output (pooled embeddings or `Tokens`) is gathered to one entry per row, so a
picture asked 20 questions is encoded once per batch, with the same result as encoding it on each row.
"""

from __future__ import annotations

import torch

from polymodal.encoders.tokens import Tokens


def to_rows(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Per-item outputs -> per-row outputs (`index` None: already per row)."""
    return x if index is None else x.index_select(0, index)


def tokens_to_rows(t: Tokens, index: torch.Tensor | None) -> Tokens:
    """`to_rows` of every per-item tensor of a `Tokens` (coordinates and grid are shared by all rows)."""
    if index is None:
        return t
    return Tokens(to_rows(t.tokens, index), to_rows(t.mask, index), to_rows(t.pooled, index), t.coords, t.grid)


def expand_batch(batch: dict) -> dict:
    """The same batch with every input per row (for a network that does not read `index`)."""
    if not batch.get("index"):
        return batch
    inputs = {n: to_rows(x, batch["index"].get(n)) for n, x in batch["inputs"].items()}
    return {k: v for k, v in batch.items() if k != "index"} | {"inputs": inputs}
