"""Decode each distinct media file of a table once, however many rows name it.

A question-answering table names the same picture on every question of it; `load_media_once` decodes each
distinct cell of an image, audio or video column once and hands every row naming it the same array object, so
decoded memory scales with distinct files and the preprocessing can keep one copy per file
(`polymodal.preprocess.features.distinct_items`). A bad file is reported on each row that names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.data.schema import Modality, Schema, input_column
from polymodal.data.validate import Problem, load_media

MEDIA = (Modality.IMAGE, Modality.AUDIO, Modality.VIDEO)


def load_media_once(
    df: pd.DataFrame, schema: Schema, base_dir: Path, skip: tuple[str, ...] = (), **options: Any
) -> tuple[dict[str, list[np.ndarray | None]], list[Problem]]:
    """`load_media` (same arguments and results), each distinct cell of a media column decoded once."""
    columns = [c for c, m in schema.columns.items() if m in MEDIA and c not in skip]
    if not columns:
        return load_media(df, schema, base_dir, skip=skip, **options)
    codes: dict[str, np.ndarray] = {}
    distinct: dict[str, list] = {}
    for col in columns:
        # Cells equal as values are one file (bytes too); empty cells (None, NaN) get code -1 and stay empty.
        codes[col], uniques = pd.factorize(pd.Series(df[col].tolist(), dtype=object), use_na_sentinel=True)
        distinct[col] = list(uniques)
    n = max(len(v) for v in distinct.values())
    table = pd.DataFrame({c: pd.Series(v + [None] * (n - len(v)), dtype=object) for c, v in distinct.items()})
    decoded, item_problems = load_media(table, schema, base_dir, skip=skip, **options)
    out: dict[str, list[np.ndarray | None]] = {}
    for name, items in decoded.items():
        rows = codes[input_column(name, schema.columns)]
        out[name] = [items[c] if c >= 0 else None for c in rows.tolist()]
    problems = []
    for p in item_problems:  # an item's problem, on each row naming it
        problems += [Problem(int(i), p.column, p.reason) for i in np.flatnonzero(codes[p.column] == p.row)]
    return out, sorted(problems, key=lambda p: (columns.index(p.column), p.row))  # as load_media orders them
