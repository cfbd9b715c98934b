"""A FAISS index of one column of a gallery table, embedded by an aligned model, with the rows' other columns
as metadata. The folder (`polymodal index ... -o DIR`):

    index.faiss     the FAISS index (faiss.write_index; never pickled), ids = row ids (IndexIDMap2)
    metadata.jsonl  one JSON object per row: {"id": ..., column: value, ...}
    settings.json   kind, parameters, dimension, the model's folder and weights fingerprint, tables added

Written atomically (a temporary sibling folder, then rename), also after `add` and `remove`. An index is bound
to the weights it was built with: opening it with another model is refused (`IndexMismatch`).
"""

from __future__ import annotations

import ast
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.errors import UserError
from polymodal.files import atomic_folder
from polymodal.model.artifact import read_json, write_json

INDEX, METADATA, SETTINGS = "index.faiss", "metadata.jsonl", "settings.json"
KINDS = ("flat", "hnsw", "ivf")
FLAT_BELOW = 50_000  # exact search is fast enough below this many rows
HNSW_BELOW = 2_000_000  # above it, IVF's smaller memory wins
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 64


class IndexMismatch(UserError):
    """The index was built by a different model (other weights) than the one used to query or change it."""


def choose_kind(n: int) -> str:
    return "flat" if n < FLAT_BELOW else "hnsw" if n < HNSW_BELOW else "ivf"


def ivf_nlist(n: int) -> int:
    return int(max(1, min(65536, 4 * math.sqrt(max(n, 1)))))


def make_index(kind: str, dim: int, vectors: np.ndarray, params: dict[str, Any] | None = None):
    """An empty FAISS inner-product index of `kind` (trained on `vectors` for IVF), wrapped in IndexIDMap2."""
    import faiss

    params = dict(params or {})
    if kind == "flat":
        base = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, params.get("M", HNSW_M), faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = params.get("efConstruction", HNSW_EF_CONSTRUCTION)
        base.hnsw.efSearch = params.get("efSearch", HNSW_EF_SEARCH)
    elif kind == "ivf":
        nlist = params.get("nlist") or ivf_nlist(len(vectors))
        if len(vectors) < nlist:
            raise UserError(f"an IVF index needs at least nlist={nlist} vectors to train on, got {len(vectors)}")
        quantizer = faiss.IndexFlatIP(dim)
        base = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        base.train(np.ascontiguousarray(vectors, dtype=np.float32))
        base.nprobe = params.get("nprobe", max(1, nlist // 16))
    else:
        raise UserError(f"unknown index kind {kind!r}; choose one of {KINDS}")
    return faiss.IndexIDMap2(base)


def search_params(kind: str, settings: dict[str, Any], selector=None, boost: int = 1):
    """FAISS search parameters: the filter (an IDSelector) and efSearch / nprobe, raised `boost` times."""
    import faiss

    p = settings.get("params", {})
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(sel=selector, efSearch=int(p.get("efSearch", HNSW_EF_SEARCH) * boost))
    if kind == "ivf":
        nlist = int(p["nlist"])
        return faiss.SearchParametersIVF(sel=selector, nprobe=min(nlist, int(p.get("nprobe", 1) * boost)))
    return faiss.SearchParameters(sel=selector)


# ---- metadata filters: a small, safe expression language -------------------------------------------------------
_OPS = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.In: lambda a, b: a.isin(b),
    ast.NotIn: lambda a, b: ~a.isin(b),
}


def where_mask(meta: pd.DataFrame, expr: str) -> np.ndarray:
    """Rows of `meta` matching `expr`, e.g. "speaker == 'jackson' and digit in [1, 2]". Only comparisons of a
    column with literals, `and`, `or`, `not` and parentheses: nothing is evaluated as code."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise UserError(f"filter {expr!r} is not a valid filter ({e.msg}); e.g. \"speaker == 'jackson'\"") from None

    def literal(node: ast.AST) -> Any:
        try:
            return ast.literal_eval(node)
        except ValueError:
            raise UserError(f"filter {expr!r}: compare a column with a literal (a string, number or list)") from None

    def column(node: ast.AST) -> pd.Series:
        if not isinstance(node, ast.Name):
            raise UserError(f"filter {expr!r}: the left side of a comparison must be a column name")
        if node.id not in meta.columns:
            known = [c for c in meta.columns if c != "_source"]
            raise UserError(f"filter {expr!r}: unknown column {node.id!r}; the metadata has {known}")
        return meta[node.id]

    def ev(node: ast.AST) -> pd.Series:
        if isinstance(node, ast.BoolOp):
            parts = [ev(v) for v in node.values]
            out = parts[0]
            for p in parts[1:]:
                out = (out & p) if isinstance(node.op, ast.And) else (out | p)
            return out
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ~ev(node.operand)
        if isinstance(node, ast.Compare):
            left, out = column(node.left), None
            for op, right in zip(node.ops, node.comparators, strict=True):
                if type(op) not in _OPS:
                    raise UserError(f"filter {expr!r}: operator {type(op).__name__} is not supported")
                value = literal(right)
                if isinstance(op, ast.In | ast.NotIn) and not isinstance(value, list | tuple | set):
                    raise UserError(f"filter {expr!r}: 'in' needs a list, e.g. digit in [1, 2]")
                try:
                    part = _OPS[type(op)](left, list(value) if isinstance(value, tuple | set) else value)
                except TypeError as e:
                    msg = f"filter {expr!r}: cannot compare column {node.left.id!r} with {value!r} ({e})"
                    raise UserError(msg) from None
                out = part if out is None else out & part
            return out.fillna(False).astype(bool)
        raise UserError(f"filter {expr!r}: use comparisons like col == 'x' joined by and / or / not")

    return ev(tree.body).to_numpy(dtype=bool)


# ---- the index folder -------------------------------------------------------------------------------------------
class GalleryIndex:
    """Vectors of one gallery column, their row ids, and the rows' other columns; search with an optional filter."""

    def __init__(self, index: Any, metadata: pd.DataFrame, settings: dict[str, Any]):
        self.index, self.metadata, self.settings = index, metadata, settings

    @property
    def kind(self) -> str:
        return self.settings["kind"]

    def __len__(self) -> int:
        return int(self.index.ntotal) - len(self.settings.get("deleted", []))

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        metadata: pd.DataFrame,
        *,
        column: str,
        modality: str,
        model_folder: str,
        model_fingerprint: str,
        kind: str | None = None,
        params: dict[str, Any] | None = None,
        source: dict[str, Any] | None = None,
    ) -> GalleryIndex:
        kind = kind or choose_kind(len(vectors))
        if kind not in KINDS:
            raise UserError(f"unknown index kind {kind!r}; choose one of {KINDS}")
        params = dict(params or {})
        if kind == "hnsw":
            params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH} | params
        elif kind == "ivf":
            params.setdefault("nlist", ivf_nlist(len(vectors)))
            params.setdefault("nprobe", max(1, params["nlist"] // 16))
        index = make_index(kind, vectors.shape[1], vectors, params)
        settings = {
            "format": 1,
            "kind": kind,
            "params": params,
            "dim": int(vectors.shape[1]),
            "metric": "inner_product",
            "column": column,
            "modality": modality,
            "model": model_folder,
            "model_fingerprint": model_fingerprint,
            "sources": [],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        out = cls(index, pd.DataFrame({"id": pd.Series([], dtype=np.int64)}), settings)
        out.add(vectors, ids, metadata, source)
        return out

    # ---- changing it ---------------------------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, ids: np.ndarray, metadata: pd.DataFrame, source: dict | None = None) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) != len(vectors) or len(metadata) != len(ids):
            raise UserError("vectors, ids and metadata must have one entry per row")
        if len(set(ids.tolist())) != len(ids):
            raise UserError("row ids must be unique")
        taken = set(ids.tolist()) & (set(self.metadata["id"].tolist()) | set(self.settings.get("deleted", [])))
        if taken:
            raise UserError(f"row id(s) {sorted(taken)[:10]} are already in the index; remove them first")
        if len(vectors) and vectors.shape[1] != self.settings["dim"]:
            raise UserError(f"vectors have {vectors.shape[1]} dimensions, the index {self.settings['dim']}")
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        meta = metadata.reset_index(drop=True).copy()
        meta.insert(0, "id", ids)
        if source is not None:
            self.settings["sources"].append(source)
            meta["_source"] = len(self.settings["sources"]) - 1
        self.metadata = pd.concat([self.metadata, meta], ignore_index=True) if len(self.metadata) else meta

    def remove(self, ids: list[int]) -> int:
        """Remove rows by id; unknown ids are an error (nothing is removed then)."""
        import faiss

        ids = [int(i) for i in ids]
        unknown = sorted(set(ids) - set(self.metadata["id"].tolist()))
        if unknown:
            raise UserError(f"row id(s) {unknown[:20]} are not in the index (it holds {len(self)} rows)")
        if self.kind == "hnsw":
            # An HNSW graph cannot drop nodes: removed ids become tombstones that every search filters out.
            self.settings["deleted"] = sorted(set(self.settings.get("deleted", [])) | set(ids))
        else:
            self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))
        self.metadata = self.metadata[~self.metadata["id"].isin(ids)].reset_index(drop=True)
        return len(ids)

    # ---- searching -----------------------------------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int = 10, where: str | None = None) -> list[dict[str, Any]]:
        """The k nearest rows to `query` (a (dim,) unit vector) by inner product, best first, each as
        {"id", "score", **metadata}. With `where`, only matching rows count, and k of them come back when that
        many match (the filter runs inside FAISS as an IDSelector; efSearch / nprobe are raised until enough)."""
        import faiss

        if not isinstance(k, int) or k < 1:
            raise UserError(f"k must be a positive integer, not {k!r}")
        q = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, -1))
        if q.shape[1] != self.settings["dim"]:
            raise UserError(f"the query has {q.shape[1]} dimensions, the index {self.settings['dim']}")
        selector, available = None, len(self)
        if where:
            allowed = self.metadata["id"].to_numpy(dtype=np.int64)[where_mask(self.metadata, where)]
            available = len(allowed)
            if available == 0:
                return []
            selector = faiss.IDSelectorBatch(allowed)
        elif self.settings.get("deleted"):
            dead = faiss.IDSelectorBatch(np.asarray(self.settings["deleted"], dtype=np.int64))
            selector = faiss.IDSelectorNot(dead)  # `dead` stays referenced until the search ends
        want = min(k, available)
        boost = 1
        while True:
            scores, ids = self.index.search(q, want, params=search_params(self.kind, self.settings, selector, boost))
            found = ids[0] >= 0
            # An approximate index can miss rows behind a selective filter: widen the search until k come back.
            if found.sum() >= want or self.kind == "flat" or boost >= 1 << 12:
                break
            boost *= 4
        rows = self.metadata.set_index("id", drop=False)
        out = []
        for score, i in zip(scores[0][found], ids[0][found], strict=True):
            meta = {c: _plain(v) for c, v in rows.loc[int(i)].items() if c != "_source"}
            out.append({"id": int(i), "score": float(score), **{c: v for c, v in meta.items() if c != "id"}})
        return out

    def file_of(self, row_id: int, column: str) -> Path:
        """The file a row's media cell names, resolved against the folder of the table it was added from."""
        from polymodal.data.io import resolve_path

        rows = self.metadata[self.metadata["id"] == int(row_id)]
        if rows.empty or column not in rows.columns:
            raise KeyError(f"no row {row_id} with column {column!r} in the index")
        row = rows.iloc[0]
        base = Path(self.settings["sources"][int(row["_source"])]["base_dir"]) if "_source" in row else Path.cwd()
        return resolve_path(str(row[column]), base)

    # ---- persistence ---------------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> Path:
        import faiss

        self.settings["count"] = len(self)
        self.settings["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with atomic_folder(Path(folder)) as tmp:
            faiss.write_index(self.index, str(tmp / INDEX))
            with open(tmp / METADATA, "w") as f:
                for rec in self.metadata.to_dict(orient="records"):
                    f.write(json.dumps({k: _plain(v) for k, v in rec.items()}, allow_nan=False) + "\n")
            write_json(tmp / SETTINGS, self.settings)
        return Path(folder).resolve()

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> GalleryIndex:
        import faiss

        folder = Path(folder)
        missing = [n for n in (INDEX, METADATA, SETTINGS) if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder} is not a polymodal index folder (missing {missing}); build one with `polymodal index`"
            )
        settings = read_json(folder / SETTINGS)
        index = faiss.read_index(str(folder / INDEX))
        with open(folder / METADATA) as f:
            records = [json.loads(line) for line in f if line.strip()]
        meta = pd.DataFrame.from_records(records) if records else pd.DataFrame({"id": pd.Series([], dtype=np.int64)})
        out = cls(index, meta, settings)
        if len(meta) != len(out):
            raise UserError(f"{folder}: {len(out)} vectors but {len(meta)} metadata rows; rebuild the index")
        return out

    def check_model(self, fingerprint: str, folder: str | os.PathLike[str] | None = None) -> None:
        if fingerprint != self.settings["model_fingerprint"]:
            raise IndexMismatch(
                f"this index was built by the model at {self.settings['model']} (weights "
                f"{self.settings['model_fingerprint'][:12]}), not by {folder or 'this model'} (weights "
                f"{fingerprint[:12]}): its vectors live in another space. Rebuild it with `polymodal index` and "
                "this model."
            )


def _plain(v: Any) -> Any:
    """A JSON value: numpy scalars as Python ones, NaN as None."""
    if hasattr(v, "item") and not isinstance(v, str | bytes):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
