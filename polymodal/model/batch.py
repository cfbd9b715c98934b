"""Turning `Features` into batches of tensors: `{"inputs": {name: Tensor}, "present": BoolTensor, "target": Tensor}`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from polymodal.preprocess import Features


class Collate:
    """DataLoader collate over row indices: gathers the rows of each array in one numpy indexing step.

    `distinct`: an input stored as distinct items (`Features.index`) gives the batch's distinct items only, and
    `batch["index"][input]` each row's position among them (read by `MultimodalNet`, see model/distinct.py);
    otherwise every input is per row."""

    def __init__(self, features: Features, targets: np.ndarray | None = None, distinct: bool = False):
        self.features, self.targets, self.distinct = features, targets, distinct

    def __call__(self, idx: list[int]) -> dict:
        rows = np.asarray(idx, dtype=np.int64)
        inputs, index = {}, {}
        for k, v in self.features.stored.items():
            if k not in self.features.index:
                inputs[k] = torch.from_numpy(v[rows])
            elif self.distinct:
                items, inverse = np.unique(self.features.index[k][rows], return_inverse=True)
                inputs[k], index[k] = torch.from_numpy(v[items]), torch.from_numpy(inverse.reshape(-1))
            else:
                inputs[k] = torch.from_numpy(v[self.features.index[k][rows]])
        batch = {"inputs": inputs, "present": torch.from_numpy(self.features.present[rows])}
        if index:
            batch["index"] = index
        if self.targets is not None:
            batch["target"] = torch.from_numpy(self.targets[rows])
        return batch


def iterate_batches(features: Features, batch_size: int, distinct: bool = False) -> Iterator[dict]:
    collate = Collate(features, distinct=distinct)
    for start in range(0, len(features), batch_size):
        yield collate(list(range(start, min(start + batch_size, len(features)))))


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: ({n: t.to(device) for n, t in v.items()} if isinstance(v, dict) else v.to(device)) for k, v in batch.items()
    }
