"""An aligned model and its gallery index together: build, add, remove, and search by text, image or audio.

s = Searcher.build("runs/r1", "gallery.csv", column="image", output="runs/r1/index")
s = Searcher.open("runs/r1/index"); s.search("audio", "q.wav", k=10, where="speaker == 'jackson'")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.data.io import read_table
from polymodal.data.schema import Modality
from polymodal.errors import UserError
from polymodal.retrieval.index import GalleryIndex
from polymodal.retrieval.retriever import MultimodalRetriever

MAX_K = 1000
log = logging.getLogger("polymodal")


class Searcher:
    def __init__(self, retriever: MultimodalRetriever, index: GalleryIndex, folder: Path | None = None):
        index.check_model(retriever.fingerprint, retriever.folder)
        self.retriever, self.index, self.folder = retriever, index, folder

    # ---- building and changing -----------------------------------------------------------------------------------
    @staticmethod
    def _rows(retriever: MultimodalRetriever, table: Any, column: str, id_column: str | None, start: int):
        """(vectors, ids, metadata, source) of a gallery table's rows with the column present."""
        df, base_dir = read_table(table)
        if column not in df.columns:
            raise UserError(f"column {column!r} is missing from {table} (it has {list(df.columns)})")
        if id_column is not None:
            if id_column not in df.columns:
                raise UserError(f"--id-column {id_column!r} is missing from {table} (it has {list(df.columns)})")
            ids = pd.to_numeric(df[id_column], errors="coerce")
            if ids.isna().any() or (ids % 1 != 0).any():
                raise UserError(f"--id-column {id_column!r} must hold integers in every row")
            ids = ids.to_numpy(dtype=np.int64)
        else:
            ids = np.arange(start, start + len(df), dtype=np.int64)
        vectors, present = retriever.embed((df, base_dir), column)
        if not present.all():
            skipped = np.flatnonzero(~present)
            log.warning(
                "%d row(s) with an empty %r are not indexed (rows %s)", len(skipped), column, skipped[:10].tolist()
            )
        meta = df[present].reset_index(drop=True)
        source = {"table": str(table) if not isinstance(table, pd.DataFrame) else "DataFrame",
                  "base_dir": str(base_dir), "rows": int(present.sum())}  # fmt: skip
        return vectors[present], ids[present], meta, source

    @classmethod
    def build(
        cls,
        model: str | os.PathLike[str] | MultimodalRetriever,
        gallery: Any,
        column: str,
        output: str | os.PathLike[str] | None = None,
        kind: str | None = None,
        params: dict[str, Any] | None = None,
        id_column: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> Searcher:
        """Embed `column` of the gallery table with the aligned model and index it (saved when `output`)."""
        r = model if isinstance(model, MultimodalRetriever) else MultimodalRetriever.load(model, cache_dir=cache_dir)
        if r.folder is None:
            raise UserError("save the retriever first (the index records which saved weights it was built with)")
        if column not in r.schema.columns:
            raise UserError(f"column {column!r} is not aligned by the model at {r.folder}; it aligns {r.columns}")
        vectors, ids, meta, source = cls._rows(r, gallery, column, id_column, 0)
        if len(vectors) == 0:
            raise UserError(f"no row of the gallery has a {column!r} value: nothing to index")
        index = GalleryIndex.build(
            vectors, ids, meta, column=column, modality=r.schema.columns[column].value, model_folder=str(r.folder),
            model_fingerprint=r.fingerprint, kind=kind, params=params, source=source,
        )  # fmt: skip
        s = cls(r, index)
        if output is not None:
            s.folder = index.save(output)
        return s

    @classmethod
    def open(
        cls,
        folder: str | os.PathLike[str],
        model: str | os.PathLike[str] | MultimodalRetriever | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> Searcher:
        """Open an index folder with the model it records (or the one given, which must have the same weights)."""
        index = GalleryIndex.load(folder)
        if isinstance(model, MultimodalRetriever):
            r = model
        else:
            path = Path(model) if model is not None else Path(index.settings["model"])
            if model is None and not path.exists() and (Path(folder).resolve().parent / "config.json").exists():
                path = Path(folder).resolve().parent  # the model folder was moved along with its index inside
            r = MultimodalRetriever.load(path, cache_dir=cache_dir)
        return cls(r, index, Path(folder))

    def add(self, table: Any, id_column: str | None = None) -> int:
        taken = [*self.index.metadata["id"].tolist(), *self.index.settings.get("deleted", [])]
        start = int(max(taken)) + 1 if taken else 0
        vectors, ids, meta, source = self._rows(self.retriever, table, self.index.settings["column"], id_column, start)
        self.index.add(vectors, ids, meta, source)
        return len(ids)

    def remove(self, ids: list[int]) -> int:
        return self.index.remove(ids)

    def save(self, folder: str | os.PathLike[str] | None = None) -> Path:
        target = folder or self.folder
        if target is None:
            raise UserError("give a folder to save the index to")
        self.folder = self.index.save(target)
        return self.folder

    # ---- searching -----------------------------------------------------------------------------------------------
    def search(
        self, modality: str | Modality, value: Any, k: int = 10, where: str | None = None, column: str | None = None
    ) -> list[dict[str, Any]]:
        """The k gallery rows nearest to a query: a file path or bytes (image, audio) or a string (text)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise UserError(f"k must be an integer from 1 to {MAX_K}, not {k!r}")
        try:
            modality = Modality(modality)
        except ValueError:
            raise UserError(f"unknown query modality {modality!r}; use text, image or audio") from None
        query = self.retriever.embed_query(value, modality, column)
        return self.index.search(query, k=k, where=where)
