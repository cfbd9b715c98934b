"""`MultimodalPredictor`: the facade users touch (fit, predict, predict_proba, evaluate, save, load, info)."""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal import __version__
from polymodal.data.io import read_table
from polymodal.data.schema import Modality, Schema, infer_schema
from polymodal.data.validate import (
    BadRowsError,
    Problem,
    check_columns,
    check_labels,
    load_media,
    write_report,
)
from polymodal.preprocess import Features, PreprocessConfig, Preprocessor

log = logging.getLogger("polymodal")

BAD_ROW_POLICIES = ("error", "skip")
DROPPED_REPORT = "dropped_rows.csv"


def _table_name(source: Any) -> str:
    return "the DataFrame" if isinstance(source, pd.DataFrame) else str(source)


def fingerprint(df: pd.DataFrame) -> str:
    """A short content hash of a table, recorded beside the metrics measured on it."""
    h = hashlib.sha256(pd.util.hash_pandas_object(df.astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


class MultimodalPredictor:
    """Fit a fused model on a table whose columns hold text, image/audio file paths, numbers and categories.

    >>> p = MultimodalPredictor(label="y", fusion="attention").fit(train_df, valid_df)
    >>> p.evaluate(test_df); p.predict(df); p.save("runs/m1"); MultimodalPredictor.load("runs/m1")
    """

    def __init__(
        self,
        label: str,
        fusion: str = "attention",
        problem_type: str | None = None,
        modalities: dict[str, str | Modality] | None = None,
        ignore: list[str] | None = None,
        preprocess: PreprocessConfig | dict | None = None,
        embed_dim: int = 128,
        hidden: int = 128,
        dropout: float = 0.1,
        max_epochs: int = 30,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        patience: int = 6,
        seed: int = 0,
        valid_fraction: float = 0.1,
        modality_dropout: float = 0.0,
        augment: bool = True,
        on_bad_rows: str = "error",
        accelerator: str = "auto",
        devices: int | str = 1,
        precision: str = "32-true",
        progress: bool = True,
    ):
        from polymodal.fusion import FUSIONS

        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {sorted(FUSIONS)}")
        if on_bad_rows not in BAD_ROW_POLICIES:
            raise ValueError(f"on_bad_rows must be one of {BAD_ROW_POLICIES}, not {on_bad_rows!r}")
        if not 0.0 < valid_fraction < 1.0:
            raise ValueError("valid_fraction must be between 0 and 1")
        self.label, self.fusion, self.problem_type = label, fusion, problem_type
        self.modalities = {c: Modality(m) for c, m in (modalities or {}).items()}
        self.ignore = list(ignore or [])
        if isinstance(preprocess, dict):
            preprocess = PreprocessConfig(**preprocess)
        self.preprocess_config = preprocess or PreprocessConfig()
        self.embed_dim, self.hidden, self.dropout = embed_dim, hidden, dropout
        self.valid_fraction, self.on_bad_rows = valid_fraction, on_bad_rows
        from polymodal.training import TrainConfig

        self.train_config = TrainConfig(
            max_epochs=max_epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience,
            seed=seed, accelerator=accelerator, devices=devices, precision=precision,
            modality_dropout=modality_dropout, augment=augment, progress=progress,
        )  # fmt: skip
        self.engine = None
        self.schema: Schema | None = None
        self.metrics_: dict[str, Any] = {}
        self.dropped_: list[Problem] = []

    # ---- fitting -----------------------------------------------------------------------------------
    def _load_rows(
        self, source: Any, schema: Schema, *, training: bool, table: tuple[pd.DataFrame, Path] | None = None
    ) -> tuple[pd.DataFrame, dict[str, list], list[Problem]]:
        """Read, check and decode a table; bad rows raise or are dropped (and remembered), per on_bad_rows."""
        df, base_dir = table or read_table(source)
        check_columns(df, schema, training=training)
        problems = check_labels(df, schema)
        cfg = self.preprocess_config
        media, media_problems = load_media(df, schema, base_dir, cfg.image_size, cfg.sample_rate)
        problems = sorted(problems + media_problems, key=lambda p: (p.row, p.column))
        if problems:
            if self.on_bad_rows == "error":
                raise BadRowsError(problems, _table_name(source))
            bad = sorted({p.row for p in problems})
            log.warning("dropping %d bad row(s) of %s; see %s", len(bad), _table_name(source), DROPPED_REPORT)
            keep = np.setdiff1d(np.arange(len(df)), bad)
            df, media = (
                df.iloc[keep].reset_index(drop=True),
                {k: [v[i] for i in keep] for k, v in media.items()},
            )
            if len(df) == 0:
                raise BadRowsError(problems, _table_name(source))
        return df, media, problems

    def fit(self, train: Any, valid: Any | None = None) -> MultimodalPredictor:
        """Train on `train` (path or DataFrame); validate on `valid`, or on a stratified 10 % split of train."""
        from polymodal.model.inference import InferenceEngine
        from polymodal.model.network import MultimodalNet
        from polymodal.tasks import Task
        from polymodal.training import train as run_training

        start = time.perf_counter()
        table = read_table(train)
        schema = infer_schema(table[0], self.label, self.modalities, self.ignore, self.problem_type)
        df, media, problems = self._load_rows(train, schema, training=True, table=table)
        self.dropped_ = list(problems)
        if valid is not None:
            vdf, vmedia, vproblems = self._load_rows(valid, schema, training=False)
            self.dropped_ += [Problem(p.row, p.column, f"[valid] {p.reason}") for p in vproblems]
        else:
            df, media, vdf, vmedia = self._split(df, media, schema)
        if schema.problem_type.is_classification and df[schema.label].nunique() < 2:
            raise ValueError(f"the label {schema.label!r} has a single class in the training rows")

        preprocessor = Preprocessor(schema, self.preprocess_config).fit(df, media)
        task = Task.fit(schema.problem_type, df[schema.label])
        train_x, valid_x = preprocessor.transform(df, media), preprocessor.transform(vdf, vmedia)
        train_y, valid_y = task.encode_targets(df[schema.label]), task.encode_targets(vdf[schema.label])

        net = MultimodalNet(
            schema.inputs,
            preprocessor.input_specs(),
            task,
            self.fusion,
            self.embed_dim,
            self.hidden,
            self.dropout,
        )
        result = run_training(net, task, schema.inputs, train_x, train_y, valid_x, valid_y, self.train_config)
        self.schema = schema
        self.engine = InferenceEngine(schema, preprocessor, task, net)
        self.metrics_ = {
            "valid": task.metrics(vdf[schema.label], self.engine.outputs(valid_x)) | {"data": fingerprint(vdf)},
            "train_rows": len(df),
            "valid_rows": len(vdf),
            "dropped_rows": len({(p.row, p.reason.startswith("[valid]")) for p in self.dropped_}),
            "fit_seconds": round(time.perf_counter() - start, 3),
        } | result
        return self

    def _split(
        self, df: pd.DataFrame, media: dict[str, list], schema: Schema
    ) -> tuple[pd.DataFrame, dict[str, list], pd.DataFrame, dict[str, list]]:
        from sklearn.model_selection import train_test_split

        idx = np.arange(len(df))
        y = df[schema.label]
        stratify = None
        if schema.problem_type.is_classification:
            counts = y.value_counts()
            n_valid = int(np.ceil(self.valid_fraction * len(df)))
            if counts.min() >= 2 and n_valid >= len(counts):
                stratify = y.astype(str)
        tr, va = train_test_split(
            idx, test_size=self.valid_fraction, random_state=self.train_config.seed, stratify=stratify
        )
        tr, va = np.sort(tr), np.sort(va)

        def take(ix: np.ndarray) -> tuple[pd.DataFrame, dict[str, list]]:
            return df.iloc[ix].reset_index(drop=True), {k: [v[i] for i in ix] for k, v in media.items()}

        return (*take(tr), *take(va))

    # ---- using -------------------------------------------------------------------------------------
    def _require_fitted(self):
        if self.engine is None:
            raise RuntimeError("this predictor is not fitted: call fit() or MultimodalPredictor.load(folder)")
        return self.engine

    def _outputs(self, data: Any, on_bad_rows: str = "error") -> tuple[pd.DataFrame, np.ndarray, Features]:
        engine = self._require_fitted()
        df, base_dir = read_table(data)
        features, problems = engine.features(df, base_dir, on_bad_rows=on_bad_rows)
        for p in problems:
            log.warning("row %d, column %r: %s; predicted without it", p.row, p.column, p.reason)
        return df, engine.outputs(features), features

    def predict_proba(self, data: Any, on_bad_rows: str = "error") -> pd.DataFrame:
        """Class probabilities, one column per class. `on_bad_rows='missing'` treats a broken file as absent."""
        engine = self._require_fitted()
        if not engine.task.is_classification:
            raise ValueError("predict_proba is for classification; this model does regression")
        df, out, _ = self._outputs(data, on_bad_rows)
        return pd.DataFrame(out, columns=[str(c) for c in engine.task.classes], index=df.index)

    def predict(self, data: Any, on_bad_rows: str = "error") -> pd.Series:
        engine = self._require_fitted()
        df, out, _ = self._outputs(data, on_bad_rows)
        return pd.Series(engine.task.decode(out), index=df.index, name=self.label)

    def evaluate(self, data: Any) -> dict[str, Any]:
        """Metrics on a labelled table (accuracy, precision, recall, F1, AUROC, confusion matrix; RMSE, MAE, R2)."""
        engine = self._require_fitted()
        df, media, problems = self._load_rows(data, engine.schema, training=False)
        features = engine.preprocessor.transform(df, media)
        metrics = engine.task.metrics(df[engine.schema.label], engine.outputs(features))
        return metrics | {"data": fingerprint(df), "dropped_rows": len({p.row for p in problems})}

    # ---- persistence -------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        engine = self._require_fitted()
        return {
            "polymodal_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": platform.python_version(),
            "label": self.label,
            "schema": engine.schema.to_dict(),
            "task": engine.task.to_dict(),
            "fusion": self.fusion,
            "embed_dim": self.embed_dim,
            "hidden": self.hidden,
            "dropout": self.dropout,
            "input_specs": engine.preprocessor.input_specs(),
            "encoders": {
                name: {"modality": m.value, "kind": "scratch", "class": type(enc).__name__}
                for (name, m), enc in zip(engine.schema.inputs.items(), engine.net.encoders.values(), strict=True)
            },
            "train": self.train_config.to_dict(),
            "valid_fraction": self.valid_fraction,
        }

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the model folder atomically (temporary sibling folder, then rename)."""
        from polymodal.model.artifact import save_folder

        engine = self._require_fitted()
        extra = {}
        if self.dropped_:
            import tempfile

            tmp = Path(tempfile.mkdtemp()) / DROPPED_REPORT
            write_report(self.dropped_, tmp)
            extra[DROPPED_REPORT] = tmp
        return save_folder(
            Path(folder),
            self.config(),
            engine.net.state_dict(),
            engine.preprocessor.to_dict(),
            self.metrics_,
            extra,
        )

    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str = "cpu") -> MultimodalPredictor:
        """Rebuild the exact model from its folder (safetensors weights, JSON everything else)."""
        from polymodal.model.artifact import load_folder
        from polymodal.model.inference import InferenceEngine
        from polymodal.model.network import MultimodalNet
        from polymodal.tasks import Task

        config, state, preprocess, metrics = load_folder(Path(folder))
        schema = Schema.from_dict(config["schema"])
        train = dict(config["train"])
        p = cls(
            label=config["label"], fusion=config["fusion"], problem_type=schema.problem_type.value,
            preprocess=preprocess["config"], embed_dim=config["embed_dim"], hidden=config["hidden"],
            dropout=config["dropout"], valid_fraction=config.get("valid_fraction", 0.1),
            **{k: train[k] for k in ("max_epochs", "batch_size", "lr", "weight_decay", "patience", "seed")},
        )  # fmt: skip
        preprocessor = Preprocessor.from_dict(schema, preprocess)
        task = Task.from_dict(config["task"])
        net = MultimodalNet(
            schema.inputs, config["input_specs"], task, config["fusion"], config["embed_dim"], config["hidden"],
            config["dropout"],
        )  # fmt: skip
        net.load_state_dict(state, strict=True)
        p.schema, p.metrics_ = schema, metrics
        p.engine = InferenceEngine(schema, preprocessor, task, net.to(device))
        return p

    def info(self) -> dict[str, Any]:
        engine = self._require_fitted()
        n_params = sum(t.numel() for t in engine.net.parameters())
        per_part = {
            name: sum(t.numel() for t in enc.parameters())
            for name, enc in zip(engine.schema.inputs, engine.net.encoders.values(), strict=True)
        }
        per_part["fusion"] = sum(t.numel() for t in engine.net.fusion.parameters())
        per_part["head"] = sum(t.numel() for t in engine.net.head.parameters())
        return {
            **self.config(),
            "parameters": n_params,
            "parameters_by_part": per_part,
            "metrics": self.metrics_,
        }
