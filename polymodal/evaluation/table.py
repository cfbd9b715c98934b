"""Rendering metrics as terminal tables (rich)."""

from __future__ import annotations

from typing import Any

CLASSIFICATION_COLUMNS = [
    "accuracy",
    "f1_macro",
    "f1_weighted",
    "precision_macro",
    "recall_macro",
    "auroc",
    "log_loss",
]
REGRESSION_COLUMNS = ["rmse", "mae", "r2"]
MULTILABEL_COLUMNS = ["f1_micro", "f1_macro", "jaccard_samples", "accuracy", "hamming_loss", "auroc"]
TEXT_COLUMNS = ["wer", "cer", "bleu", "chrf", "cider", "rouge_l", "exact_match"]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4f}"
    return str(v)


def metrics_table(rows: dict[str, dict[str, Any]], title: str = "metrics", extra: list[str] | None = None):
    """One row per model (or split), one column per headline metric."""
    from rich.table import Table

    first = next(iter(rows.values()), {})
    if "f1_micro" in first:  # rows with no label (data.empty_label none or a token): their count and accuracy
        columns = list(MULTILABEL_COLUMNS) + (["empty_rows", "empty_accuracy"] if "empty_rows" in first else [])
    elif "wer" in first:
        columns = list(TEXT_COLUMNS)
    else:
        columns = CLASSIFICATION_COLUMNS if "accuracy" in first else REGRESSION_COLUMNS
    columns = columns + list(extra or [])
    table = Table(title=title)
    table.add_column("model")
    for c in columns:
        table.add_column(c, justify="right")
    for name, m in rows.items():
        table.add_row(name, *[_fmt(m.get(c)) for c in columns])
    return table


def confusion_table(matrix: list[list[int]], classes: list[Any]):
    from rich.table import Table

    table = Table(title="confusion matrix (rows: true, columns: predicted)")
    table.add_column("")
    for c in classes:
        table.add_column(str(c), justify="right")
    for c, row in zip(classes, matrix, strict=True):
        table.add_row(str(c), *[str(v) for v in row])
    return table
