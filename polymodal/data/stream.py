"""Tables read in chunks, for tables larger than memory.

A chunk is a DataFrame whose index holds each row's position in the whole table (numbered from 0, as in every
error message), so a problem found in chunk 40 names the same row as it would in memory. Parquet is read by
row groups (split further to `chunk_rows`), CSV/TSV and JSONL by pandas' chunked readers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.data.io import read_table, table_name
from polymodal.errors import UserError

STREAMING_MODES = ("auto", "on", "off")


def _suffix(path: Path) -> str:
    return "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()


@dataclass(frozen=True)
class TableSplit:
    """One side of a hashed split of a table (`split_mask` of each row's position): the `held_out` fraction, or
    the rest. It is read wherever a streamed table is (`iter_chunks`, `head`), and its rows keep their positions
    in the whole table, so a streamed compare holds out test rows without writing a copy of the table."""

    source: Any
    fraction: float
    seed: int
    held_out: bool

    def __str__(self) -> str:
        return f"{table_name(self.source)} ({'held-out test' if self.held_out else 'training'} rows)"

    def keep(self, rows: np.ndarray) -> np.ndarray:
        held = split_mask(rows, self.fraction, self.seed)
        return held if self.held_out else ~held


def table_dir(source: Any) -> Path:
    """The folder a table's relative file paths resolve against (see `read_table`)."""
    if isinstance(source, TableSplit):
        return table_dir(source.source)
    return Path.cwd() if isinstance(source, pd.DataFrame) else Path(source).resolve().parent


def iter_chunks(source: Any, chunk_rows: int, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """The table in chunks of at most `chunk_rows` rows, indexed by their position in the whole table."""
    if chunk_rows < 1:
        raise UserError(f"data.chunk_rows must be at least 1, not {chunk_rows}")
    if isinstance(source, TableSplit):  # the split's rows of each chunk, at their positions in the whole table
        for chunk in iter_chunks(source.source, chunk_rows, columns):
            keep = source.keep(chunk.index.to_numpy())
            if keep.any():
                yield chunk[keep]
        return
    start = 0
    for chunk in _raw_chunks(source, chunk_rows, columns):
        for lo in range(0, len(chunk), chunk_rows):
            part = chunk.iloc[lo : lo + chunk_rows]
            part.index = pd.RangeIndex(start, start + len(part))
            start += len(part)
            yield part


def _raw_chunks(source: Any, chunk_rows: int, columns: list[str] | None) -> Iterator[pd.DataFrame]:
    if isinstance(source, pd.DataFrame):
        df = source if columns is None else source[columns]
        for lo in range(0, len(df), chunk_rows):
            yield df.iloc[lo : lo + chunk_rows]
        return
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"table {str(path)!r} does not exist")
    suffix = _suffix(path)
    if suffix in (".csv", ".csv.gz", ".tsv"):
        with pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", chunksize=chunk_rows, usecols=columns) as r:
            yield from r
    elif suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        f = pq.ParquetFile(path)
        for batch in f.iter_batches(batch_size=chunk_rows, columns=columns):
            yield batch.to_pandas()
    elif suffix in (".jsonl", ".ndjson", ".jsonl.gz"):
        with pd.read_json(path, lines=True, chunksize=chunk_rows) as r:
            for chunk in r:
                yield chunk if columns is None else chunk[columns]
    else:  # .json and the rest cannot be read in parts: read whole (read_table names the formats it knows)
        df, _ = read_table(path)
        yield from _raw_chunks(df if columns is None else df[columns], chunk_rows, None)


def head(source: Any, n: int) -> pd.DataFrame:
    """The first `n` rows (schema inference and the settings of pretrained inputs look at these)."""
    parts, got = [], 0
    for chunk in iter_chunks(source, min(n, 65536)):
        parts.append(chunk)
        got += len(chunk)
        if got >= n:
            break
    if not parts:
        raise UserError(f"{table_name(source)} has no rows")
    return pd.concat(parts).iloc[:n]


def count_rows(source: Any) -> int:
    """Rows in the table: Parquet from its footer, text formats by counting lines (an estimate when a quoted
    CSV cell spans lines; only the automatic streaming switch relies on it)."""
    if isinstance(source, pd.DataFrame):
        return len(source)
    path = Path(source)
    suffix = _suffix(path)
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if suffix.endswith(".gz"):
        return max(1, path.stat().st_size // 50)  # no cheap count; a rough guess by size
    n = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            n += block.count(b"\n")
    return max(0, n - (1 if suffix in (".csv", ".tsv") else 0))


def available_memory() -> int:
    """Bytes of memory available to new work (MemAvailable on Linux; physical memory elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def wants_streaming(mode: str, source: Any, row_bytes: int, memory: int | None = None) -> bool:
    """Whether to stream: `on`/`off` as told; `auto` streams a file whose decoded rows would take more than a
    quarter of the available memory. A DataFrame is already in memory: auto keeps it there."""
    if mode not in STREAMING_MODES:
        raise UserError(f"data.streaming must be one of {list(STREAMING_MODES)}, not {mode!r}")
    if mode != "auto":
        return mode == "on"
    if isinstance(source, pd.DataFrame):
        return False
    memory = available_memory() if memory is None else memory
    return count_rows(source) * row_bytes > memory // 4


def split_mask(rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the rows of the validation split: a hash of (seed, row position), so every chunking and every
    process picks the same rows without seeing the others."""
    with np.errstate(over="ignore"):  # splitmix64: wrapping arithmetic is the point
        # splitmix64 of a state that is never 0 (a 0 state hashes to 0: row 0 would always be a validation row)
        x = (rows.astype(np.uint64) + (np.uint64(seed) << np.uint64(32)) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


def valid_mask(
    chunk: pd.DataFrame, fraction: float, seed: int, split_by: str | None = None, groups: frozenset[str] = frozenset()
) -> np.ndarray:
    """The validation rows of a chunk: a hash of each row's position, or with `split_by` the rows whose group is
    one of `groups` (chosen from a pass over that column), so a group falls wholly on one side whatever the
    chunking."""
    if split_by is None:
        return split_mask(chunk.index.to_numpy(), fraction, seed)
    return chunk[split_by].astype(str).isin(groups).to_numpy()


class Fingerprint:
    """The content hash of a table fed in chunks; equal to `fingerprint(df)` of the whole table."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, df: pd.DataFrame) -> None:
        self._h.update(pd.util.hash_pandas_object(df.astype(str), index=False).to_numpy().tobytes())

    def hexdigest(self) -> str:
        return self._h.hexdigest()[:16]


def fingerprint(df: pd.DataFrame) -> str:
    """A short content hash of a table, recorded beside the metrics measured on it."""
    f = Fingerprint()
    f.update(df)
    return f.hexdigest()


def table_fingerprint(source: Any, chunk_rows: int) -> str:
    """`fingerprint` of a table read in chunks (one pass; equal to that of the whole table in memory)."""
    f = Fingerprint()
    for chunk in iter_chunks(source, chunk_rows):
        f.update(chunk)
    return f.hexdigest()
