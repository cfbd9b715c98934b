"""Turning `Features` into batches of tensors: `{"inputs": {name: Tensor}, "present": BoolTensor, "target": Tensor}`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from polymodal.preprocess import Features


class Collate:
    """DataLoader collate over row indices: gathers the rows of each array in one numpy indexing step."""

    def __init__(self, features: Features, targets: np.ndarray | None = None):
        self.features, self.targets = features, targets

    def __call__(self, idx: list[int]) -> dict:
        rows = np.asarray(idx)
        batch = {
            "inputs": {k: torch.from_numpy(v[rows]) for k, v in self.features.inputs.items()},
            "present": torch.from_numpy(self.features.present[rows]),
        }
        if self.targets is not None:
            batch["target"] = torch.from_numpy(self.targets[rows])
        return batch


def iterate_batches(features: Features, batch_size: int) -> Iterator[dict]:
    collate = Collate(features)
    for start in range(0, len(features), batch_size):
        yield collate(list(range(start, min(start + batch_size, len(features)))))


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: ({n: t.to(device) for n, t in v.items()} if isinstance(v, dict) else v.to(device)) for k, v in batch.items()
    }
