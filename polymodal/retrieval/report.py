"""The retrieval section of `polymodal report` for an aligned model: recall@k, mAP and MRR in both directions
(instance- and class-level), and the training curves. Reuses the report's page style and table helper."""

from __future__ import annotations

import os
import time
from typing import Any

from polymodal.evaluation.html import CSS, esc, note, table, training_chart

METRIC_COLUMNS = ["direction", "level", "recall@1", "recall@5", "recall@10", "precision@1", "mAP", "MRR", "queries"]


def metric_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (direction, level) of `MultimodalRetriever.evaluate`'s result."""
    rows = []
    for direction, levels in metrics.items():
        if isinstance(levels, dict) and "instance" in levels:
            rows += [{"direction": direction, "level": level, **m} for level, m in levels.items()]
    return rows


def retrieval_section(metrics: dict[str, Any], history: list[dict] | None = None) -> str:
    parts = [table(metric_rows(metrics), METRIC_COLUMNS, left=("direction", "level"))]
    parts.append(
        note(
            "instance: the paired row is the one relevant item; class: every row with the query's label is relevant. "
            "recall@k: share of queries with a relevant item in the top k; mAP over the full ranking; "
            "MRR: mean 1 / rank of the first relevant item."
        )
    )
    if history:
        parts.append(training_chart({"aligned model": history}, "recall_at_1"))
    return "\n".join(parts)


def retrieval_report(folder: str | os.PathLike[str], table: Any) -> str:
    """A self-contained HTML page of an aligned model's retrieval metrics on a table."""
    from polymodal.retrieval.retriever import MultimodalRetriever

    r = MultimodalRetriever.load(folder)
    metrics = r.evaluate(table)
    title = f"Retrieval report: {folder}"
    sub = f"aligned {', '.join(r.queries)} -> {r.target}" + (f", label {r.label!r}" if r.label else "")
    sub += f"; {metrics['rows']} rows of {table}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{esc(title)}</h1>",
            note(sub),
            '<section id="retrieval"><h2>Retrieval</h2>',
            retrieval_section(metrics, r.metrics_.get("history")),
            "</section>",
            note(f"made by polymodal on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"),
            "</body></html>",
        ]
    )
