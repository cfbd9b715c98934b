"""Retrieval metrics: recall@k, precision@1, mAP and MRR of a query set against a gallery (numpy only).

Relevance is either instance-level (query i matches gallery item i: the paired row) or class-level (any
gallery item with the query's label is relevant), which is what `--label` asks for.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polymodal.errors import UserError

KS = (1, 5, 10)


def relevance(n_query: int, n_gallery: int, q_labels: np.ndarray | None = None, g_labels: np.ndarray | None = None):
    """A function rows -> boolean (len(rows), n_gallery) relevance matrix."""
    if q_labels is None or g_labels is None:
        if n_query != n_gallery:
            raise UserError("instance-level retrieval needs paired rows (as many queries as gallery items)")
        return lambda rows: rows[:, None] == np.arange(n_gallery)[None, :]
    q, g = np.asarray(q_labels).astype(str), np.asarray(g_labels).astype(str)
    return lambda rows: q[rows][:, None] == g[None, :]


def retrieval_metrics(
    queries: np.ndarray,
    gallery: np.ndarray,
    q_labels: np.ndarray | None = None,
    g_labels: np.ndarray | None = None,
    ks: tuple[int, ...] = KS,
    chunk: int = 1024,
) -> dict[str, Any]:
    """Metrics of ranking `gallery` by inner product with each of `queries` (both L2-normalized).

    recall@k: share of queries with a relevant item in the top k; precision@1: share whose top item is relevant
    (equal to recall@1); mAP: mean over queries of the average precision of the full ranking; MRR: mean of
    1 / rank of the first relevant item. Queries without any relevant item are left out (and counted).
    """
    rel_of = relevance(len(queries), len(gallery), q_labels, g_labels)
    hits = {k: [] for k in ks}
    ap, rr = [], []
    for start in range(0, len(queries), chunk):
        rows = np.arange(start, min(start + chunk, len(queries)))
        sims = queries[rows] @ gallery.T
        order = np.argsort(-sims, axis=1, kind="stable")
        rel = np.take_along_axis(rel_of(rows), order, axis=1)
        has = rel.any(axis=1)
        rel = rel[has]
        for k in ks:
            hits[k].append(rel[:, :k].any(axis=1))
        cum = np.cumsum(rel, axis=1)
        ranks = np.arange(1, rel.shape[1] + 1)[None, :]
        ap.append((rel * cum / ranks).sum(axis=1) / rel.sum(axis=1))
        rr.append(1.0 / (rel.argmax(axis=1) + 1))
    n = int(sum(len(a) for a in ap))
    out: dict[str, Any] = {f"recall@{k}": float(np.concatenate(hits[k]).mean()) if n else float("nan") for k in ks}
    out["precision@1"] = out.get("recall@1", float("nan"))
    out["mAP"] = float(np.concatenate(ap).mean()) if n else float("nan")
    out["MRR"] = float(np.concatenate(rr).mean()) if n else float("nan")
    out["queries"] = n
    out["queries_without_relevant"] = int(len(queries) - n)
    out["gallery"] = int(len(gallery))
    out["level"] = "instance" if q_labels is None else "class"
    return out


def recall_at_1(queries: np.ndarray, gallery: np.ndarray, q_labels=None, g_labels=None) -> float:
    """The early-stopping score: share of queries whose nearest gallery item is relevant."""
    rel_of = relevance(len(queries), len(gallery), q_labels, g_labels)
    top = np.argmax(queries @ gallery.T, axis=1)
    rows = np.arange(len(queries))
    return float(rel_of(rows)[rows, top].mean()) if len(queries) else float("nan")
