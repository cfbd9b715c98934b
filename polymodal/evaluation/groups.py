"""Scores per group: when a column names a kind of row (a question type, a source, a site), the metrics of
each of its values beside the overall ones (`data.group_by`, `--group-by`). The group column is never an input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def group_metrics(task: Any, y_true: pd.Series, outputs: np.ndarray, groups: pd.Series) -> dict[str, dict[str, Any]]:
    """{group value: {"n": rows, metric: value, ...}} for each value of `groups` (scalar metrics only).
    A missing group value is its own group, "(missing)"."""
    keys = groups.astype(object).where(groups.notna(), "(missing)").astype(str).to_numpy()
    out: dict[str, dict[str, Any]] = {}
    for value in sorted(set(keys)):
        idx = np.flatnonzero(keys == value)
        m = task.metrics(y_true.iloc[idx], outputs[idx])
        out[value] = {k: v for k, v in m.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return out
