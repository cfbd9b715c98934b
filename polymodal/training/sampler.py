"""Training batches that keep the rows of one file together (train.group_batches).

In a question-answering table every question of a picture names the same file; batches made of whole groups
(the rows of one picture, groups in a shuffled order) let the network encode each picture once per batch for
all its questions (`polymodal/model/distinct.py`), instead of once per question. Every row is used exactly once
per epoch. A batch then holds about batch_size / (questions per picture) pictures: a scratch image encoder's
BatchNorm sees that many, so a larger batch may suit such a table.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from polymodal.preprocess.features import MIN_REPEATS, Features


def grouping_on(setting: str, features: Features) -> bool:
    """Whether training batches are grouped: train.group_batches on, or auto when a file repeats on MIN_REPEATS
    rows or more on average."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"train.group_batches must be auto, on or off, not {setting!r}")
    if setting == "off" or features.groups() is None:
        return False
    return setting == "on" or features.mean_repeats() >= MIN_REPEATS


class GroupedBatches:
    """A batch sampler over rows labelled by `groups`: each epoch the groups in a random order (rows of a group
    shuffled among themselves), cut into batches of `batch_size` rows; a group may straddle two batches. Every
    row is in one batch a epoch: a last batch of a single row joins the one before (no BatchNorm batch of 1).

    One process: the order is drawn from `generator` (the loader's, checkpointed, so a resumed run draws the same
    batches). Distributed: from (seed, epoch) on every process alike, process `rank` taking every `world`-th
    batch, all processes the same number (the last few batches of an epoch may go unused)."""

    def __init__(self, groups: np.ndarray, batch_size: int, generator: torch.Generator | None = None, seed: int = 0,
                 rank: int = 0, world: int = 1):  # fmt: skip
        self.batch_size = batch_size
        self.generator, self.seed, self.rank, self.world = generator, seed, rank, world
        self.epoch = 0
        order = np.argsort(groups, kind="stable")
        starts = np.flatnonzero(np.r_[True, groups[order][1:] != groups[order][:-1]])
        self.members = np.split(order, starts[1:])  # rows of each group
        self.n_rows = len(groups)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _permutation(self, n: int) -> np.ndarray:
        if self.world == 1:
            return torch.randperm(n, generator=self.generator).numpy()
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches (of every process)."""
        groups = self._permutation(len(self.members))
        within = self._permutation(self.n_rows)  # a random rank per row: the order of rows inside each group
        rows = np.concatenate([m[np.argsort(within[m])] for m in (self.members[g] for g in groups)])
        cuts = [rows[lo : lo + self.batch_size] for lo in range(0, len(rows), self.batch_size)]
        if len(cuts) > 1 and len(cuts[-1]) == 1 and self.batch_size > 1:
            cuts[-2:] = [np.concatenate(cuts[-2:])]
        return cuts

    def __iter__(self) -> Iterator[list[int]]:
        cuts = self.batches()
        if self.world > 1:
            cuts = cuts[self.rank : len(cuts) // self.world * self.world : self.world]
        for b in cuts:
            yield b.tolist()

    def __len__(self) -> int:
        n = -(-self.n_rows // self.batch_size)
        if n > 1 and self.n_rows % self.batch_size == 1 and self.batch_size > 1:
            n -= 1
        return n // self.world if self.world > 1 else n
