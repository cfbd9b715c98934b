"""The rows a training run reads, in memory or streamed, and their loaders for one process of a (possibly
distributed) run.

`MemoryRows`: preprocessed `Features` held in memory (small tables; the fastest path). `StreamRows`: a table
read chunk by chunk, its media decoded and preprocessed on the fly in DataLoader worker processes, so memory
stays flat however many rows there are.

Distributed runs split rows by position: process r of w takes every w-th row (in memory: of a shuffled order,
with torch's DistributedSampler; streamed: of the table's order), and every process runs the same number of
training batches, which DDP's gradient all-reduce needs. `batch_size` is the global batch: each process takes
batch_size / world, so one process and N processes take the same optimizer steps over the same data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, IterableDataset

from polymodal.data.io import table_name
from polymodal.data.schema import Modality
from polymodal.data.stream import Fingerprint, TableSplit, iter_chunks, valid_mask
from polymodal.data.validate import BadRowsError, Problem, check_labels
from polymodal.errors import UserError
from polymodal.model.batch import Collate
from polymodal.model.pipeline import FeaturePipeline, take_rows
from polymodal.preprocess import Features
from polymodal.tasks import Task
from polymodal.training.sampler import GroupedBatches, grouping_on

log = logging.getLogger("polymodal")


def per_process_batch(batch_size: int, world: int) -> int:
    return max(1, batch_size // world)


class MemoryRows:
    """Preprocessed features and targets in memory."""

    def __init__(self, features: Features, targets: np.ndarray):
        self.features, self.targets = features, targets

    def __len__(self) -> int:
        return len(self.features)

    def pixel_inputs(self, inputs: dict[str, Modality]) -> list[str]:
        # A frozen image column arrives as (batch, dim) embeddings: only pixels are augmented.
        return [n for n, m in inputs.items() if m is Modality.IMAGE and self.features.stored[n].ndim == 4]

    def fingerprint(self, h: Any) -> None:
        for name in sorted(self.features.stored):
            h.update(name.encode() + np.ascontiguousarray(self.features.stored[name]).tobytes())
            if name in self.features.index:  # distinct items: which row reads which
                h.update(b"index" + np.ascontiguousarray(self.features.index[name]).tobytes())
        h.update(np.ascontiguousarray(self.features.present).tobytes())
        h.update(np.ascontiguousarray(self.targets).tobytes())

    def loader(self, batch_size: int, train: bool, generator: torch.Generator, rank: int, world: int, seed: int,
               workers: int | None = None, group: str = "auto") -> DataLoader:  # fmt: skip
        """`group`: train.group_batches (training/sampler.py): training batches of whole groups of rows sharing a
        file. Batches carry a file shared by rows once (`Collate(distinct=True)`)."""
        workers = workers or 0
        collate = Collate(self.features, self.targets, distinct=True)
        n = len(self.features)
        if train and grouping_on(group, self.features):
            b = per_process_batch(batch_size, world)
            batches = GroupedBatches(self.features.groups(), b, generator, seed, rank, world)
            return DataLoader(range(n), batch_sampler=batches, collate_fn=collate, num_workers=workers)
        if world == 1:
            return DataLoader(
                range(n), batch_size=batch_size if train else 2 * batch_size, shuffle=train, collate_fn=collate,
                generator=generator if train else None, drop_last=train and n > batch_size,  # no BatchNorm batch of 1
                num_workers=workers,
            )  # fmt: skip
        b = per_process_batch(batch_size, world)
        if train:  # the same shuffled order on every process (seed + epoch), every w-th row each
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(range(n), world, rank, shuffle=True, seed=seed, drop_last=True)
            return DataLoader(range(n), batch_size=b, sampler=sampler, collate_fn=collate, drop_last=n // world > b)
        # Validation: every row exactly once over all processes (no padding repeats), gathered for the metrics.
        return DataLoader(list(range(rank, n, world)), batch_size=2 * b, collate_fn=collate)


@dataclass
class StreamRows:
    """A split of a table, read in chunks: `part` "train" or "valid" takes the rows of a hashed validation split
    (`split_mask`), "all" every row, less `skip_rows` (bad rows found before training). Labels are checked
    chunk by chunk as in memory: a bad one raises, or drops its row with on_bad_rows="skip"."""

    source: Any
    base_dir: Path
    pipeline: FeaturePipeline
    task: Task
    label: str | None  # None: unlabelled rows (predict)
    chunk_rows: int
    part: str = "all"
    valid_fraction: float = 0.1
    seed: int = 0
    split_by: str | None = None  # validation rows are whole groups of this column: those in `valid_groups`
    valid_groups: frozenset[str] = frozenset()
    on_bad_rows: str = "error"
    n_rows: int = 0  # rows of this part, counted by the fitting pass
    skip_rows: frozenset[int] = frozenset()
    buffer_chunks: int = 4  # rows are shuffled within a window of this many chunks

    def __len__(self) -> int:
        return self.n_rows

    def pixel_inputs(self, inputs: dict[str, Modality]) -> list[str]:
        frozen = set(self.pipeline.frozen_inputs)
        return [n for n, m in inputs.items() if m is Modality.IMAGE and n not in frozen]

    def fingerprint(self, h: Any) -> None:
        # The table file itself (its size and modification time: hashing 10^6 rows of media is a pass of its own)
        # and which rows of it this part takes.
        source = self.source
        if isinstance(source, TableSplit):
            h.update(f"{source.fraction}:{source.seed}:{source.held_out}".encode())
            source = source.source
        if isinstance(source, pd.DataFrame):
            h.update(pd.util.hash_pandas_object(source.astype(str), index=False).to_numpy().tobytes())
        else:
            st = Path(source).stat()
            h.update(f"{Path(source).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(f"{self.part}:{self.valid_fraction}:{self.seed}:{self.n_rows}:{sorted(self.skip_rows)}".encode())
        if self.split_by:
            h.update(f"split_by:{self.split_by}:{sorted(self.valid_groups)}".encode())

    def fewest_rows(self, world: int) -> int:
        """The rows of this part the least served of `world` processes gets (a pass over the label column)."""
        counts = np.zeros(world, dtype=np.int64)
        columns = [c for c in (self.label, self.split_by if self.part != "all" else None) if c] or None
        for chunk in self.chunks(columns=columns):
            counts += np.bincount(chunk.index.to_numpy() % world, minlength=world)
        return int(counts.min())

    def chunks(self, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
        """This part's rows, chunk by chunk (index: position in the table)."""
        for chunk in iter_chunks(self.source, self.chunk_rows, columns):
            keep = np.ones(len(chunk), dtype=bool)
            if self.part != "all":
                valid = valid_mask(chunk, self.valid_fraction, self.seed, self.split_by, self.valid_groups)
                keep &= valid if self.part == "valid" else ~valid
            if self.skip_rows:
                keep &= ~chunk.index.isin(list(self.skip_rows))
            if keep.any():
                yield chunk[keep]

    def features(self, chunk: pd.DataFrame) -> tuple[pd.DataFrame, Features, list[Problem]]:
        """Decode and preprocess one chunk; bad rows raise (on_bad_rows="error") or are dropped."""
        media, frozen, problems = self.pipeline.decode(chunk, self.base_dir)
        problems = [Problem(int(chunk.index[p.row]), p.column, p.reason) for p in problems]
        if self.label:
            problems += [Problem(int(chunk.index[p.row]), p.column, p.reason)
                         for p in check_labels(chunk, self.pipeline.schema)]  # fmt: skip
        if problems:
            if self.on_bad_rows == "error":
                raise BadRowsError(sorted(problems, key=lambda p: (p.row, p.column)), table_name(self.source))
            bad = np.isin(chunk.index.to_numpy(), [p.row for p in problems])
            for p in problems:
                log.warning("row %d, column %r: %s; row dropped", p.row, p.column, p.reason)
            chunk, media, frozen = take_rows(chunk, media, frozen, np.flatnonzero(~bad))
        return chunk, self.pipeline.features(chunk, media, frozen), problems

    def loader(self, batch_size: int, train: bool, generator: torch.Generator, rank: int, world: int, seed: int,
               workers: int | None = None, group: str = "auto") -> StreamLoader:  # fmt: skip
        # `group` is not used: streamed rows are shuffled within a window of chunks, a file's rows not grouped.
        if workers is None:  # decoding in the background, leaving a core per process for the model
            workers = min(4, max(1, (os.cpu_count() or 2) // world - 1))
        b = per_process_batch(batch_size, world) if world > 1 else batch_size
        b = b if train else 2 * b
        dataset = StreamBatches(self, b, train, rank, world, seed)
        n_batches = None
        if train and world > 1:
            # Every process must run the same number of steps. Its rows are n // world or one more; each worker's
            # last batch may be partial, so the count a process is sure to reach is its full batches minus the
            # workers beyond the first.
            n_batches = max(1, self.fewest_rows(world) // b - max(workers, 1) + 1)
        return StreamLoader(dataset, workers, n_batches)


def stream_outputs(rows: StreamRows, model: Any, group_by: str | None = None) -> dict[str, Any]:
    """`model`'s outputs (an InferenceEngine, or anything with `outputs(features)` that shares `rows.pipeline`'s
    features) on every row of `rows`, with their labels, the group column, the count of dropped rows and the
    rows' fingerprint, chunk by chunk: only these small arrays are kept, never the decoded rows."""
    printed, dropped = Fingerprint(), 0
    ys, outs, groups = [], [], []
    for chunk in rows.chunks():
        kept, features, problems = rows.features(chunk)
        dropped += len({p.row for p in problems})
        printed.update(kept)
        ys.append(kept[rows.label])
        outs.append(model.outputs(features))
        if group_by:
            groups.append(kept[group_by])
    if not ys:
        raise UserError(f"no row of {table_name(rows.source)} could be evaluated")
    return {"y": pd.concat(ys, ignore_index=True), "outputs": np.concatenate(outs), "dropped": dropped,
            "groups": pd.concat(groups, ignore_index=True) if groups else None,
            "data": printed.hexdigest()}  # fmt: skip


class StreamBatches(IterableDataset):
    """Batches of a `StreamRows`, made in the DataLoader's worker processes: each worker takes every k-th chunk,
    each process every w-th row of it; rows are shuffled within a window of chunks, the window order by epoch."""

    def __init__(self, rows: StreamRows, batch_size: int, train: bool, rank: int, world: int, seed: int):
        self.rows, self.batch_size, self.train = rows, batch_size, train
        self.rank, self.world, self.seed = rank, world, seed
        self.epoch = 0

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        window: list[tuple[Features, np.ndarray]] = []
        carry: tuple[Features, np.ndarray] | None = None
        for i, chunk in enumerate(self.rows.chunks()):
            if i % workers != worker:
                continue
            if self.world > 1:
                chunk = chunk.iloc[self._mine(chunk)]
                if chunk.empty:
                    continue
            chunk, features, _ = self.rows.features(chunk)
            if len(chunk) == 0:
                continue
            label = self.rows.label
            targets = self.rows.task.encode_targets(chunk[label]) if label else np.zeros(len(chunk), np.float32)
            window.append((features, targets))
            if len(window) >= (self.rows.buffer_chunks if self.train else 1):
                carry = yield from self._emit(window, carry, rng, final=False)
                window = []
        yield from self._emit(window, carry, rng, final=True)

    def _mine(self, chunk: pd.DataFrame) -> np.ndarray:
        """Positions in this chunk of this process's rows: those whose position in the table is rank modulo world
        (a worker that skips chunks cannot count ordinals within the part)."""
        return np.flatnonzero(chunk.index.to_numpy() % self.world == self.rank)

    def _emit(self, window: list, carry: tuple | None, rng: np.random.Generator, final: bool):
        parts = ([carry] if carry is not None else []) + window
        if not parts:
            return None
        features = Features(
            {k: np.concatenate([f.inputs[k] for f, _ in parts]) for k in parts[0][0].inputs},
            np.concatenate([f.present for f, _ in parts]),
            parts[0][0].input_names,
        )
        targets = np.concatenate([t for _, t in parts])
        order = rng.permutation(len(targets)) if self.train else np.arange(len(targets))
        b = self.batch_size
        full = len(order) // b * b
        collate = Collate(features, targets)
        for lo in range(0, full, b):
            yield collate(order[lo : lo + b].tolist())
        rest = order[full:]
        if final:
            if len(rest) > (1 if self.train else 0):  # no training batch of 1 (BatchNorm)
                yield collate(rest.tolist())
            return None
        return (features.take(rest), targets[rest]) if len(rest) else None


class StreamLoader:
    """What Lightning iterates for a `StreamRows`: a fresh DataLoader each epoch (its workers see the epoch),
    stopped after `n_batches` when every process must run the same number. `sampler.set_epoch` is where
    Lightning hands over the epoch, as it does for a DistributedSampler."""

    def __init__(self, dataset: StreamBatches, workers: int, n_batches: int | None):
        self.dataset, self.workers, self.n_batches = dataset, workers, n_batches
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = epoch

    def __len__(self) -> int:
        if self.n_batches is not None:
            return self.n_batches
        return max(1, -(-self.dataset.rows.n_rows // (self.dataset.batch_size * self.dataset.world)))

    def __iter__(self) -> Iterator[dict]:
        loader = DataLoader(
            self.dataset, batch_size=None, num_workers=self.workers, persistent_workers=False,
            prefetch_factor=2 if self.workers else None,
        )  # fmt: skip
        produced = 0
        for batch in loader:
            yield batch
            produced += 1
            if self.n_batches is not None and produced >= self.n_batches:
                return
        if self.n_batches is not None and produced < self.n_batches:
            raise RuntimeError(
                f"this process ran out of rows after {produced} of its {self.n_batches} batches; lower "
                "train.num_workers or train.batch_size"
            )
