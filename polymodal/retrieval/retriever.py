"""`MultimodalRetriever`: align two or more columns of a table in one embedding space, then embed, evaluate,
index and search. The model folder is an ordinary polymodal folder whose config.json says kind "aligned".

>>> r = MultimodalRetriever(query="audio", target="image", label="digit").fit("train.csv")
>>> r.save("runs/r1"); r = MultimodalRetriever.load("runs/r1"); r.evaluate("test.csv")
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.config import Config, EncodersConfig, TrainConfig, TreeSettings, build_config
from polymodal.config.sections import PREPROCESS_INTERNAL
from polymodal.data.io import read_table, table_name
from polymodal.data.schema import Modality, ProblemType, Schema, SchemaError, infer_modality
from polymodal.data.validate import BadRowsError, Problem, check_columns, is_missing
from polymodal.errors import UserError
from polymodal.preprocess import Features, PreprocessConfig, Preprocessor
from polymodal.version import __version__

log = logging.getLogger("polymodal")

KIND = "aligned"
CONFIG_FORMAT = 2  # the config tree under "config"; format-1 folders (settings as top-level keys) still load
MEDIA = (Modality.TEXT, Modality.IMAGE, Modality.AUDIO)


def is_aligned_folder(folder: str | os.PathLike[str]) -> bool:
    """True when `folder` holds a model written by `MultimodalRetriever.save` (config kind "aligned")."""
    from polymodal.model.artifact import CONFIG, read_json

    path = Path(folder) / CONFIG
    try:
        return path.is_file() and read_json(path).get("kind") == KIND
    except (OSError, ValueError):
        return False


def weights_fingerprint(folder: str | os.PathLike[str]) -> str:
    """SHA-256 of the model's weights file: an index records it and refuses any other model."""
    from polymodal.model.artifact import WEIGHTS

    h = hashlib.sha256()
    with open(Path(folder) / WEIGHTS, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


class MultimodalRetriever(TreeSettings):
    """Each aligned column gets its polymodal encoder (scratch, frozen pretrained through the feature cache, or
    fine-tuned) and a projection into one shared L2-normalized space. Training: symmetric InfoNCE with a learned
    temperature and in-batch negatives between each query column and the anchor (`target`); with `label`, rows
    that share a label are positives too (supervised contrastive)."""

    def __init__(
        self,
        query: str | list[str] | None = None,
        target: str | None = None,
        label: str | None = None,
        config: Config | dict | str | os.PathLike[str] | None = None,
        **settings: Any,
    ):
        """`config`: a `Config` (its `align` section names the columns), a mapping or a YAML/JSON file; `settings`
        on top: the keywords below by their old names (`dim`, `hidden`, `dropout`, `temperature` are the align
        section's; `encoders` maps a column or a modality to a pretrained encoder; `max_epochs`, `lr`, ... the
        train section's), whole sections or dotted paths, as for `MultimodalPredictor`."""
        if query is not None:
            settings["align.query"] = [query] if isinstance(query, str) else list(query)
        if target is not None:
            settings["align.target"] = target
        for key in ("dim", "hidden", "dropout", "temperature"):  # flat keywords of the align section
            if key in settings:
                settings[f"align.{key}"] = settings.pop(key)
        encoders = settings.pop("encoders", None)
        by_name = isinstance(encoders, dict) and not set(encoders) & {f.name for f in fields(EncodersConfig)}
        if encoders is not None and not by_name:
            settings["encoders"] = encoders  # a section mapping
        cfg = build_config(config, label=label, **settings)
        if by_name:  # {column or modality: pretrained encoder}
            for key, name in encoders.items():
                if key in {m.value for m in MEDIA}:
                    cfg.set(f"encoders.{key}.name", name)
                else:
                    cfg.set("encoders.columns", cfg.encoders.columns | {key: name})
        self.config_ = cfg
        a = cfg.align
        if a.target is None:
            raise UserError("name the anchor column: target= (or align.target in the config)")
        if not a.query:
            raise UserError("give at least one query column: query= (or align.query in the config)")
        dup = [c for c in a.query if c == a.target or a.query.count(c) > 1]
        if dup:
            raise UserError(f"column(s) {sorted(set(dup))} given twice: each aligned column appears once")
        if self.label is not None and self.label in self.columns:
            raise UserError(f"column {self.label!r} is the label and cannot also be an aligned column")
        if not 0.0 < cfg.data.valid_fraction < 1.0:
            raise UserError("data.valid_fraction must be between 0 and 1")
        self.schema: Schema | None = None
        self.pipeline = None
        self.net = None
        self.metrics_: dict[str, Any] = {}
        self.folder: Path | None = None
        self.fingerprint: str | None = None

    # The settings read most, by their old names; the tree (`config_`) is where they live.
    @property
    def queries(self) -> list[str]:
        return list(self.config_.align.query)

    @property
    def target(self) -> str:
        return self.config_.align.target  # type: ignore[return-value]

    @property
    def modalities(self) -> dict[str, Modality]:
        return {c: Modality(m) for c, m in self.config_.data.modalities.items()}

    def _network(self, input_specs: dict[str, dict[str, Any]]):
        from polymodal.retrieval.network import AlignNet

        a = self.config_.align
        # Each column's encoder output size: encoders.embed_dim, or its modality's own.
        dims = {c: self.config_.encoders.dim(m.value) for c, m in self.schema.inputs.items()}
        return AlignNet(self.schema.inputs, input_specs, dims, a.dim, a.hidden, a.dropout, a.temperature)

    @property
    def columns(self) -> list[str]:
        """The aligned columns, anchor first."""
        return [self.target, *self.queries]

    # ---- schema and preprocessing ------------------------------------------------------------------
    def _schema(self, df: pd.DataFrame) -> Schema:
        missing = [c for c in [*self.columns, *([self.label] if self.label else [])] if c not in df.columns]
        if missing:
            raise SchemaError(f"unknown column(s) {missing}: the table has columns {list(df.columns)}")
        columns = {}
        for c in self.columns:
            m = self.modalities.get(c) or infer_modality(df[c])
            if m not in MEDIA:
                raise SchemaError(
                    f"column {c!r} looks {m.value}: only text, image and audio columns can be aligned "
                    f"(force the modality with --text/--image/--audio {c} if it is one)"
                )
            columns[c] = m
        return Schema(columns, self.label or "", ProblemType.MULTICLASS)

    def _decode(self, source: Any, *, training: bool, table=None):
        """Read, check and decode a table's aligned columns (and label). Bad rows raise, or are dropped."""
        from polymodal.model.pipeline import take_rows

        df, base_dir = table or read_table(source)
        check_columns(df, self.schema, training=training)
        problems: list[Problem] = []
        if self.label:
            if self.label not in df.columns:
                raise SchemaError(f"label column {self.label!r} is missing from the table (it has {list(df.columns)})")
            problems += [Problem(int(i), self.label, "label is empty") for i in np.flatnonzero(df[self.label].isna())]
        media, frozen, more = self.pipeline.decode(df, base_dir)
        problems = sorted(problems + more, key=lambda p: (p.row, p.column))
        name = table_name(source)
        if problems:
            if self.config_.data.on_bad_rows == "error":
                raise BadRowsError(problems, name)
            bad = sorted({p.row for p in problems})
            log.warning("dropping %d bad row(s) of %s", len(bad), name)
            df, media, frozen = take_rows(df, media, frozen, np.setdiff1d(np.arange(len(df)), bad))
        return df, media, frozen, problems

    def _labels(self, df: pd.DataFrame) -> np.ndarray | None:
        if not self.label:
            return None
        return np.asarray([self.classes_.index(str(v)) if str(v) in self.classes_ else -1 for v in df[self.label]])

    # ---- fitting -----------------------------------------------------------------------------------
    def fit(self, train: Any, valid: Any | None = None) -> MultimodalRetriever:
        """Train on `train` (path or DataFrame); validate on `valid`, or on a (stratified) 10 % split of train."""
        import torch

        from polymodal.encoders.pretrained import pretrained_settings
        from polymodal.model.pipeline import FeaturePipeline, take_rows
        from polymodal.retrieval.train import train_align

        start = time.perf_counter()
        table = read_table(train)
        self.schema = self._schema(table[0])
        check_columns(table[0], self.schema, training=True)
        pretrained = pretrained_settings(self.config_.encoders, self.schema.columns)
        config = PreprocessConfig(**(self.config_.preprocess.to_dict() | {"pretrained": pretrained}))
        preprocessor = Preprocessor(self.schema, config).fit_pretrained(table[0], table[1])
        self.pipeline = FeaturePipeline(self.schema, preprocessor, self.cache_dir, progress=self.train_config.progress)
        df, media, frozen, problems = self._decode(train, training=True, table=table)
        if valid is not None:
            vdf, vmedia, vfrozen, vproblems = self._decode(valid, training=False)
        else:
            tr, va = self._split(df)
            (vdf, vmedia, vfrozen) = take_rows(df, media, frozen, va)
            (df, media, frozen) = take_rows(df, media, frozen, tr)
        self.classes_ = sorted({str(v) for v in df[self.label]}) if self.label else []
        preprocessor.fit(df, media)
        train_x, valid_x = self.pipeline.features(df, media, frozen), self.pipeline.features(vdf, vmedia, vfrozen)
        torch.manual_seed(self.train_config.seed)
        self.net = self._network(preprocessor.input_specs())
        images = [c for c, m in self.schema.columns.items() if m is Modality.IMAGE and train_x.inputs[c].ndim == 4]
        warps = preprocessor.audio_warps(self.train_config)
        result = train_align(
            self.net,
            self.target,
            images,
            train_x,
            self._labels(df),
            valid_x,
            self._labels(vdf),
            self.train_config,
            warps,
        )
        valid_metrics = self._metrics_of(self._embed_features(valid_x), valid_x.present, vdf)
        self.metrics_ = {
            "valid": valid_metrics,
            "train_rows": len(df),
            "valid_rows": len(vdf),
            "dropped_rows": len({p.row for p in problems}),
            "temperature": float(1.0 / self.net.scale().detach()),
            "fit_seconds": round(time.perf_counter() - start, 3),
            "feature_cache": {k: e.stats for k, e in self.pipeline._extractors.items()},
        } | result
        self.folder, self.fingerprint = None, None
        return self

    def _split(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.model_selection import train_test_split

        idx, fraction = np.arange(len(df)), self.config_.data.valid_fraction
        stratify = None
        if self.label:
            y = df[self.label].astype(str)
            if y.value_counts().min() >= 2 and int(np.ceil(fraction * len(df))) >= y.nunique():
                stratify = y
        tr, va = train_test_split(idx, test_size=fraction, random_state=self.train_config.seed, stratify=stratify)
        return np.sort(tr), np.sort(va)

    # ---- embedding ---------------------------------------------------------------------------------
    def _require_fitted(self) -> None:
        if self.net is None:
            raise RuntimeError("this retriever is not fitted: call fit() or MultimodalRetriever.load(folder)")

    def _embed_features(self, features: Features, batch_size: int = 256) -> dict[str, np.ndarray]:
        import torch

        from polymodal.model.batch import iterate_batches

        out: dict[str, list[np.ndarray]] = {c: [] for c in self.columns}
        device = next(self.net.parameters()).device
        with torch.inference_mode():
            for batch in iterate_batches(features, batch_size):
                for c in self.columns:
                    out[c].append(self.net.embed(c, batch["inputs"][c].to(device)).float().cpu().numpy())
        dim = self.config_.align.dim
        return {c: np.concatenate(v) if v else np.zeros((0, dim), np.float32) for c, v in out.items()}

    def column_for(self, modality: str | Modality, column: str | None = None) -> str:
        """The aligned column a query of this modality goes through (or check the one named)."""
        self._require_fitted()
        modality = Modality(modality)
        if column is not None:
            if column not in self.schema.columns:
                raise SchemaError(f"column {column!r} is not aligned by this model; it aligns {self.columns}")
            if self.schema.columns[column] is not modality:
                raise SchemaError(f"column {column!r} is {self.schema.columns[column].value}, not {modality.value}")
            return column
        cols = self.schema.columns_of(modality)
        if not cols:
            have = sorted({m.value for m in self.schema.columns.values()})
            raise SchemaError(f"this model has no {modality.value} column: it searches with {have} only")
        if len(cols) > 1:
            raise SchemaError(f"several {modality.value} columns are aligned ({cols}); name one as the query column")
        return cols[0]

    def embed(self, data: Any, column: str, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (n, dim), present (n,)) of one column of a table: a path, a DataFrame, or (DataFrame, folder
        its relative paths resolve against). Only that column is read; frozen encoders go through the feature
        cache. Bad files raise BadRowsError."""
        self._require_fitted()
        if column not in self.schema.columns:
            raise SchemaError(f"column {column!r} is not aligned by this model; it aligns {self.columns}")
        df, base_dir = data if isinstance(data, tuple) else read_table(data)
        if column not in df.columns:
            raise SchemaError(f"column {column!r} is missing from the table (it has {list(df.columns)})")
        only = pd.DataFrame({c: df[column] if c == column else None for c in self.schema.columns}, index=df.index)
        media, frozen, problems = self.pipeline.decode(only.reset_index(drop=True), base_dir)
        if problems:
            raise BadRowsError(problems, "the table" if isinstance(data, tuple) else str(data))
        features = self.pipeline.features(only.reset_index(drop=True), media, frozen)
        j = list(self.schema.inputs).index(column)
        sub = Features({column: features.inputs[column]}, features.present[:, [j]], [column])
        emb = np.zeros((len(df), self.config_.align.dim), np.float32)
        present = features.present[:, j].copy()
        if present.any():
            import torch

            from polymodal.model.batch import iterate_batches

            chunks = []
            with torch.inference_mode():
                for batch in iterate_batches(sub.take(np.flatnonzero(present)), batch_size):
                    chunks.append(self.net.embed(column, batch["inputs"][column]).float().numpy())
            emb[present] = np.concatenate(chunks)
        return emb, present

    def embed_query(self, value: Any, modality: str | Modality, column: str | None = None) -> np.ndarray:
        """One query (a file path or bytes for image/audio, a string for text) -> its (dim,) unit vector."""
        col = self.column_for(modality, column)
        if is_missing(value) or (isinstance(value, bytes | bytearray) and not value):
            raise UserError(f"the {Modality(modality).value} query is empty")
        if Modality(modality) is Modality.TEXT and not isinstance(value, str):
            raise UserError("a text query must be a string")
        emb, present = self.embed((pd.DataFrame({col: [value]}), Path.cwd()), col)
        if not present[0]:
            raise UserError(f"the {Modality(modality).value} query has no content the model can read")
        return emb[0]

    # ---- evaluation --------------------------------------------------------------------------------
    def _metrics_of(self, emb: dict[str, np.ndarray], present: np.ndarray, df: pd.DataFrame) -> dict[str, Any]:
        from polymodal.retrieval.metrics import retrieval_metrics

        names = list(self.schema.inputs)
        labels = df[self.label].astype(str).to_numpy() if self.label else None
        out: dict[str, Any] = {}
        for q in self.queries:
            both = present[:, names.index(q)] & present[:, names.index(self.target)]
            qe, te = emb[q][both], emb[self.target][both]
            lab = labels[both] if labels is not None else None
            for name, a, b in ((f"{q}->{self.target}", qe, te), (f"{self.target}->{q}", te, qe)):
                out[name] = {"instance": retrieval_metrics(a, b)}
                if lab is not None:
                    out[name]["class"] = retrieval_metrics(a, b, lab, lab)
        return out

    def evaluate(self, data: Any) -> dict[str, Any]:
        """recall@1/5/10, precision@1, mAP and MRR in both directions between each query column and the target,
        on the rows of `data` where both are present: instance-level (the paired row), and class-level when the
        model has a label."""
        self._require_fitted()
        df, media, frozen, problems = self._decode(data, training=False)
        features = self.pipeline.features(df, media, frozen)
        metrics = self._metrics_of(self._embed_features(features), features.present, df)
        return metrics | {
            "rows": len(df),
            "data": _table_fingerprint(df),
            "dropped_rows": len({p.row for p in problems}),
        }

    # ---- persistence -------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        self._require_fitted()
        pre = self.pipeline.preprocessor
        return {
            "kind": KIND,
            "polymodal_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": platform.python_version(),
            "schema": self.schema.to_dict(),
            "target": self.target,
            "queries": self.queries,
            "label": self.label,
            "classes": self.classes_,
            "config_format": CONFIG_FORMAT,
            "config": self.config_.to_dict(),
            "input_specs": pre.input_specs(),
            "encoders": {
                c: {"modality": m.value} | _encoder_record(pre.config.pretrained.get(c))
                for c, m in self.schema.columns.items()
            },
        }

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the model folder atomically: config.json, model.safetensors, preprocess.json, metrics.json (and
        the config/tokenizer files of fine-tuned encoders under encoders/)."""
        from polymodal.model.artifact import save_folder

        self._require_fitted()
        extra: dict[str, Path] = {}
        for name, p in self.pipeline.preprocessor.config.pretrained.items():
            if p["mode"] == "finetune" and p["ref"]["kind"] == "hf":
                for f in Path(p["ref"]["path"]).iterdir():
                    if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".pth", ".pt", ".h5", ".onnx")):
                        extra[f"encoders/{self.net.keys[name]}/{f.name}"] = f
        out = save_folder(
            Path(folder),
            self.config(),
            self.net.state_dict(),
            self.pipeline.preprocessor.to_dict(),
            self.metrics_,
            extra,
        )
        self.folder, self.fingerprint = out, weights_fingerprint(out)
        return out

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
    ) -> MultimodalRetriever:
        """Rebuild the exact aligned model from its folder (safetensors weights, JSON everything else)."""
        from polymodal.model.artifact import load_folder
        from polymodal.model.pipeline import FeaturePipeline, relink_encoders

        folder = Path(folder)
        if not is_aligned_folder(folder):
            raise UserError(
                f"{folder} is not an aligned model folder (make one with `polymodal align`); "
                "a classifier folder is used with predict/evaluate instead"
            )
        config, state, preprocess, metrics = load_folder(folder)
        schema = Schema.from_dict(config["schema"])
        tree = Config.from_dict(config["config"]) if "config" in config else _legacy_tree(config, preprocess)
        tree.encoders.cache_dir = None if cache_dir is None else str(cache_dir)  # the training machine's is not ours
        r = cls(config=tree)
        preprocessor = Preprocessor.from_dict(schema, preprocess)
        specs = relink_encoders(folder, preprocessor, config["input_specs"])
        r.schema = schema
        r.net = r._network(specs)
        r.net.load_state_dict(state, strict=True)
        r.net.eval()
        r.classes_, r.metrics_ = list(config.get("classes", [])), metrics
        r.pipeline = FeaturePipeline(schema, preprocessor, r.cache_dir, progress=False)
        r.folder, r.fingerprint = folder.resolve(), weights_fingerprint(folder)
        return r


def _legacy_tree(config: dict[str, Any], preprocess: dict[str, Any]) -> Config:
    """The tree of an aligned folder written before it held one (its settings as top-level keys)."""
    known = {f.name for f in fields(TrainConfig)}
    return Config.from_dict({
        "data": {"label": config["label"], "valid_fraction": config["valid_fraction"]},
        "align": {"target": config["target"], "query": config["queries"], "dim": config["dim"],
                  "hidden": config["hidden"], "dropout": config["dropout"], "temperature": config["temperature"]},
        "encoders": {"embed_dim": config["embed_dim"]},
        "train": {k: v for k, v in config["train"].items() if k in known},
        "preprocess": {k: v for k, v in preprocess["config"].items() if k not in PREPROCESS_INTERNAL},
    })  # fmt: skip


def _table_fingerprint(df: pd.DataFrame) -> str:
    """A short content hash of a table, recorded beside the metrics measured on it (as `fit` does)."""
    h = hashlib.sha256(pd.util.hash_pandas_object(df.astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def _encoder_record(p: dict[str, Any] | None) -> dict[str, Any]:
    if p is None:
        return {"kind": "scratch"}
    ref = p["ref"]
    return {"kind": p["mode"], "encoder": ref["name"], "fingerprint": ref["fingerprint"], "revision": ref["revision"],
            "path": ref["path"], "lora": p.get("lora", False)}  # fmt: skip
