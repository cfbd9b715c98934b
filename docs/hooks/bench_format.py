"""Formatting shared by the benchmark table renderers (gen_benchmarks.py, bench_media.py)."""

from __future__ import annotations

import re
from typing import Any

Row = list[Any]


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[Row]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _bold_max(rows: list[Row], col: int) -> list[Row]:
    """Bold the largest value of a column (the winner), as text."""
    values = [float(r[col]) for r in rows if re.fullmatch(r"-?\d+(\.\d+)?", str(r[col]))]
    if not values:
        return rows
    best = max(values)
    for r in rows:
        if re.fullmatch(r"-?\d+(\.\d+)?", str(r[col])) and float(r[col]) == best:
            r[col] = f"**{r[col]}**"
    return rows
