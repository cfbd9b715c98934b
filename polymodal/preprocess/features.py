"""`Features`: model-ready arrays, one per fusion input, rows first, and a presence mask.

A media column whose files repeat across rows (a question-answering table: the same picture on every question
of it) is stored once per distinct file: for such an input `stored[name]` is a table of distinct items and
`index[name][row]` the item of each row, so memory scales with distinct files, not rows. `inputs` still reads
per row (expanded on access); batches (`polymodal/model/batch.py`) and the network use the compact form, so the
encoder runs once per distinct item of a batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

MIN_REPEATS = 2.0  # an input is stored as distinct items when rows repeat them this many times on average


class RowInputs(Mapping):
    """Read-only per-row view of compact features: `view[name]` is the input's array with one entry per row."""

    def __init__(self, stored: dict[str, np.ndarray], index: dict[str, np.ndarray]):
        self._stored, self._index = stored, index

    def __getitem__(self, name: str) -> np.ndarray:
        array = self._stored[name]
        return array[self._index[name]] if name in self._index else array

    def __iter__(self) -> Iterator[str]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)


class Features:
    """Model-ready arrays: one per fusion input (rows first) and `present[row, input]`.

    `index`: for the inputs stored as distinct items, row -> item (see the module doc); `stored` holds the arrays
    as given (item tables for those inputs), `inputs` the per-row arrays."""

    def __init__(
        self,
        inputs: Mapping[str, np.ndarray],
        present: np.ndarray,
        input_names: list[str] | None = None,
        index: dict[str, np.ndarray] | None = None,
    ):
        self.stored = inputs if isinstance(inputs, dict) else dict(inputs)
        self.present = present
        self.input_names = list(input_names or [])
        self.index = dict(index or {})

    @property
    def inputs(self) -> Mapping[str, np.ndarray]:
        # Without an index, the dict itself (callers may keep using it as before).
        return RowInputs(self.stored, self.index) if self.index else self.stored

    def __len__(self) -> int:
        return int(self.present.shape[0])

    def take(self, idx: np.ndarray) -> Features:
        """These rows; an input stored as distinct items keeps its item table (only its index is taken)."""
        inputs = {k: (v if k in self.index else v[idx]) for k, v in self.stored.items()}
        return Features(inputs, self.present[idx], self.input_names, {k: v[idx] for k, v in self.index.items()})

    def concat(self, other: Features) -> Features:
        """These rows, then `other`'s (same inputs). An input stored as distinct items keeps one item table: the
        shared one when both came from it (`take`), else both tables one after the other, `other`'s index shifted."""
        stored, index = {}, {}
        for k, v in self.stored.items():
            w = other.stored[k]
            if k not in self.index:
                stored[k] = np.concatenate([v, w])
                continue
            shared = w is v
            stored[k] = v if shared else np.concatenate([v, w])
            index[k] = np.concatenate([self.index[k], other.index[k] + (0 if shared else len(v))])
        return Features(stored, np.concatenate([self.present, other.present]), self.input_names, index)

    def with_present(self, present: np.ndarray) -> Features:
        """The same arrays with another presence mask."""
        return Features(self.stored, present, self.input_names, self.index)

    def expand(self) -> Features:
        """Every input per row (what the exported ONNX graph takes)."""
        return Features(dict(self.inputs), self.present, self.input_names) if self.index else self

    def groups(self) -> np.ndarray | None:
        """Row -> group for batching rows that share a file: the item of the most repeated input stored as distinct
        items (a row whose item is absent is a group of its own); None when no input is."""
        best, best_repeats = None, 0.0
        for j, name in enumerate(self.input_names):
            if name not in self.index:
                continue
            present = self.present[:, j]
            repeats = present.sum() / max(1, len(np.unique(self.index[name][present])))
            if repeats > best_repeats:
                best, best_repeats = j, repeats
        if best is None:
            return None
        name, present = self.input_names[best], self.present[:, best]
        n_items = len(self.stored[name])
        return np.where(present, self.index[name], n_items + np.arange(len(self)))

    def mean_repeats(self) -> float:
        """Rows per distinct group (`groups`) on average: 1.0 when no file repeats."""
        groups = self.groups()
        return len(self) / max(1, len(np.unique(groups))) if groups is not None else 1.0


def distinct_items(values: list) -> tuple[list, np.ndarray] | None:
    """(the distinct objects of `values`, row -> item) when rows share the same objects (decoded media: a file
    read once is the same array on each of its rows; None, an empty cell, is one item) at least MIN_REPEATS times
    on average; None otherwise."""
    seen: dict[int, int] = {}
    items: list = []
    index = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        j = seen.get(id(v))
        if j is None:
            j = seen[id(v)] = len(items)
            items.append(v)
        index[i] = j
    if not values or len(items) * MIN_REPEATS > len(values):
        return None
    return items, index
