"""Reading tables (CSV, Parquet, JSONL or a DataFrame) and resolving the file paths in them."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from polymodal.errors import UserError


def read_table(source: str | os.PathLike[str] | pd.DataFrame) -> tuple[pd.DataFrame, Path]:
    """Return the table and the folder its relative file paths resolve against.

    A DataFrame's paths resolve against the current working directory.
    """
    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True), Path.cwd()
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"table {str(path)!r} does not exist")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if suffix in (".csv", ".csv.gz", ".tsv"):
        df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    elif suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    elif suffix in (".jsonl", ".ndjson", ".jsonl.gz"):
        df = pd.read_json(path, lines=True)
    elif suffix == ".json":
        df = pd.read_json(path)
    else:
        raise UserError(
            f"cannot read {str(path)!r}: unknown table format {suffix!r}. Use .csv, .tsv, .parquet or .jsonl."
        )
    return df.reset_index(drop=True), path.resolve().parent


def table_name(source: str | os.PathLike[str] | pd.DataFrame) -> str:
    """How messages name a table: its path, or "the DataFrame"."""
    return "the DataFrame" if isinstance(source, pd.DataFrame) else str(source)


def resolve_path(value: str, base_dir: Path) -> Path:
    p = Path(os.path.expanduser(str(value).strip()))
    return p if p.is_absolute() else base_dir / p
