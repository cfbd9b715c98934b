"""`MultimodalPredictor`: the facade users touch (fit, predict, predict_proba, evaluate, save, load, info)."""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.config import Config, TreeSettings, build_config
from polymodal.data.io import read_table, table_name
from polymodal.data.schema import Schema
from polymodal.data.stream import fingerprint
from polymodal.data.validate import (
    Problem,
    check_columns,
    write_report,
)
from polymodal.errors import UserError
from polymodal.files import make_temp_file
from polymodal.preprocess import Features, Preprocessor
from polymodal.training.config import check_config
from polymodal.training.table import (
    DROPPED_REPORT,
    load_rows,
    open_train_table,
    split_rows,
    start_pipeline,
    streams,
)
from polymodal.version import __version__

log = logging.getLogger("polymodal")

CONFIG_FORMAT = 2  # config.json with the config tree under "config"; 0.1.0 folders (flat keys) still load


class MultimodalPredictor(TreeSettings):
    """Fit a fused model on a table whose columns hold text, image/audio file paths, numbers and categories.

    >>> p = MultimodalPredictor(label="y", fusion="attention").fit(train_df, valid_df)
    >>> p.evaluate(test_df); p.predict(df); p.save("runs/m1"); MultimodalPredictor.load("runs/m1")
    """

    def __init__(self, label: str | None = None, config: Config | dict | str | os.PathLike[str] | None = None,
                 **settings: Any):  # fmt: skip
        """`config`: a `Config`, a mapping or a YAML/JSON file; `settings` on top of it: the flat keywords
        (`fusion="early"`, `lr=1e-3`, `embed_dim=64`, `text_encoder=...`; see `polymodal.config.FLAT_KEYWORDS`),
        whole sections (`train={"lr": 1e-3}`) or dotted paths (`**{"encoders.image.embed_dim": 64}`)."""
        self.config_ = build_config(config, label=label, **settings)
        check_config(self.config_)
        self.engine = None
        self.schema: Schema | None = None
        self.metrics_: dict[str, Any] = {}
        self.dropped_: list[Problem] = []

    @property
    def fusion(self) -> str:
        return self.config_.fusion.name

    # ---- fitting -----------------------------------------------------------------------------------
    def _load_rows(self, source: Any, pipeline: Any, *, training: bool, table: tuple[pd.DataFrame, Path] | None = None):
        """Read, check and decode a table with this predictor's bad-row policy (see `training.table.load_rows`)."""
        return load_rows(self.config_, source, pipeline, training=training, table=table)

    def fit(self, train: Any, valid: Any | None = None, callbacks: list | None = None) -> MultimodalPredictor:
        """Train on `train` (path or DataFrame); validate on `valid`, or on a stratified 10 % split of train.
        `callbacks`: extra Lightning callbacks (e.g. a tuner's pruning callback). With `privacy.anonymize`, the
        tables are anonymized first (into `privacy.output_dir`, else a temporary folder) and only the copies are
        read, so no raw personal value reaches the vocabularies, logs or the model folder."""
        if self.config_.privacy.anonymize:
            from polymodal.privacy import anonymize_tables

            with tempfile.TemporaryDirectory(prefix="polymodal-anonymized-") as tmp:
                tables = anonymize_tables(
                    self.config_, self.config_.privacy.output_dir or tmp, log.info, train=train, valid=valid
                )
                return self._fit(tables["train"], tables["valid"], callbacks)
        return self._fit(train, valid, callbacks)

    def streams(self, source: Any) -> bool:
        """Whether `source` is read in chunks (data.streaming: on, off, or auto: a file whose decoded rows would
        take more than a quarter of the available memory)."""
        return streams(self.config_, source, self.schema)

    def _fit(self, train: Any, valid: Any | None, callbacks: list | None) -> MultimodalPredictor:
        from polymodal.tasks import Task

        start = time.perf_counter()
        table = open_train_table(self.config_, train)  # read once, inferred once
        pipeline = start_pipeline(self.config_, table, self.cache_dir, self.train_config.progress)  # checked once
        if table.streaming:
            return self._fit_streaming(table, pipeline, valid, callbacks, start)
        schema, preprocessor = table.schema, pipeline.preprocessor
        df, media, frozen, problems = load_rows(
            self.config_, train, pipeline, training=True, table=(table.df, table.base_dir), checked=True
        )
        self.dropped_ = list(problems)
        if valid is not None:
            vdf, vmedia, vfrozen, vproblems = self._load_rows(valid, pipeline, training=False)
            self.dropped_ += [Problem(p.row, p.column, f"[valid] {p.reason}") for p in vproblems]
        else:
            (df, media, frozen), (vdf, vmedia, vfrozen) = split_rows(self.config_, df, media, frozen, schema)
        if schema.problem_type.is_classification and df[schema.label].nunique() < 2:
            raise UserError(f"the label {schema.label!r} has a single class in the training rows")

        preprocessor.fit(df, media)
        speech = any(m.value == "audio" for m in schema.inputs.values())  # text: WER is the default metric
        task = Task.fit(schema.problem_type, df[schema.label], self.config_.decoder, speech, schema.empty_label)
        train_x, valid_x = pipeline.features(df, media, frozen), pipeline.features(vdf, vmedia, vfrozen)
        train_y = task.encode_targets(df[schema.label])

        self.fit_features(schema, preprocessor, task, train_x, train_y, valid_x, vdf, start=start, callbacks=callbacks)
        self.metrics_["train_rows"] = len(df)
        self.metrics_["dropped_rows"] = len({(p.row, p.reason.startswith("[valid]")) for p in self.dropped_})
        self.metrics_["feature_cache"] = {k: e.stats for k, e in pipeline._extractors.items()}
        return self

    def _fit_streaming(self, table: Any, pipeline: Any, valid: Any | None, callbacks: list | None, start: float
                       ) -> MultimodalPredictor:  # fmt: skip
        """`fit` for a table larger than memory: one pass fits the preprocessing (and runs frozen encoders into
        the feature cache), then training reads the table chunk by chunk in loader workers. `table`: the head
        the schema was inferred from (`open_train_table`)."""
        from polymodal.training.stream_table import prepare_streamed

        schema, preprocessor = table.schema, pipeline.preprocessor
        task, train_rows, valid_rows, problems = prepare_streamed(self.config_, table, pipeline, valid)
        self.dropped_ = problems
        result = self._train(schema, preprocessor, task, train_rows, valid_rows, callbacks)
        metrics: dict[str, Any] = {}
        if result["global_rank"] == 0:  # the other processes of a distributed run write nothing
            done = self._stream_outputs(valid_rows)
            metrics = task.metrics(done["y"], done["outputs"]) | {"data": done["data"]}
        self.metrics_ = {
            "valid": metrics,
            "train_rows": train_rows.n_rows,
            "valid_rows": valid_rows.n_rows,
            "dropped_rows": len({(p.row, p.reason.startswith("[valid]")) for p in problems}),
            "fit_seconds": round(time.perf_counter() - start, 3),
            "streaming": True,
            "feature_cache": {k: e.stats for k, e in pipeline._extractors.items()},  # the fitting pass's
        } | result
        return self

    def _stream_outputs(self, rows: Any, group_by: str | None = None) -> dict[str, Any]:
        from polymodal.training.data import stream_outputs

        return stream_outputs(rows, self._require_fitted(), group_by)

    def fit_features(
        self,
        schema: Schema,
        preprocessor: Preprocessor,
        task: Any,
        train_x: Features,
        train_y: np.ndarray,
        valid_x: Features,
        valid_df: pd.DataFrame,
        start: float | None = None,
        callbacks: list | None = None,
    ) -> MultimodalPredictor:
        """The training half of `fit`, on data already decoded and preprocessed (`compare` shares that work
        across its entries). Leaves the predictor exactly as `fit` does: usable, saveable, loadable."""

        from polymodal.training.data import MemoryRows

        start = time.perf_counter() if start is None else start
        valid_y = task.encode_targets(valid_df[schema.label])
        valid_rows = MemoryRows(valid_x, valid_y)
        result = self._train(schema, preprocessor, task, MemoryRows(train_x, train_y), valid_rows, callbacks)
        valid = task.metrics(valid_df[schema.label], self.engine.outputs(valid_x)) | {"data": fingerprint(valid_df)}
        if self.train_config.refit:
            all_x, all_y = train_x.concat(valid_x), np.concatenate([train_y, valid_y])
            epochs = max(1, result["best_epoch"] + 1)  # 0-based
            result["refit"] = self._refit(schema, preprocessor, task, all_x, all_y, valid_rows, epochs)
        self.metrics_ = {
            "valid": valid,
            "train_rows": len(train_x),
            "valid_rows": len(valid_df),
            "dropped_rows": 0,
            "fit_seconds": round(time.perf_counter() - start, 3),
        } | result
        split_by = self.config_.data.split_by
        if split_by and split_by in valid_df.columns:  # which groups validated (with split_by: none of them trained)
            self.metrics_["valid_groups"] = sorted(valid_df[split_by].astype(str).unique().tolist())
        return self

    def _refit(self, schema: Schema, preprocessor: Preprocessor, task: Any, all_x: Features, all_y: np.ndarray,
               valid_rows: Any, epochs: int) -> dict[str, Any]:  # fmt: skip
        """`train.refit`: the network from the same initial weights on the training and validation rows together
        for the `epochs` validation chose, the last epoch kept. No checkpoint: a killed run redoes it."""
        from polymodal.training.data import MemoryRows

        cfg = replace(self.train_config, max_epochs=epochs, patience=epochs + 1, checkpoint_dir=None, restart=False)
        result = self._train(schema, preprocessor, task, MemoryRows(all_x, all_y), valid_rows, None, cfg, "last")
        return {"rows": len(all_x)} | {k: result[k] for k in ("epochs", "train_seconds", "stopped_by")}

    def _train(self, schema: Schema, preprocessor: Preprocessor, task: Any, train_rows: Any, valid_rows: Any,
               callbacks: list | None, cfg: Any = None, keep: str = "best") -> dict[str, Any]:  # fmt: skip
        """Build the network, train it (in one process or as one of many), and make the engine over it. `cfg`: the
        training settings (default `train_config`); `keep`: which epoch's weights (`training.fit.train`)."""
        import torch

        from polymodal.model.folder import build_net
        from polymodal.model.inference import InferenceEngine
        from polymodal.training import train as run_training
        from polymodal.training.trainer import prefer_bf16

        torch.manual_seed(self.train_config.seed)  # the initial weights are part of what the seed fixes
        net = build_net(self.config_, schema, preprocessor.input_specs(), task, init=True, state=preprocessor.state)
        self.input_specs_ = getattr(net, "resolved_specs", None)  # readouts: their text models, for the folder
        if any(p["mode"] == "finetune" for p in preprocessor.config.pretrained.values()):
            prefer_bf16(self.train_config)
        warps = preprocessor.audio_warps(self.train_config) | preprocessor.video_augmenters(self.train_config)
        cfg = cfg or self.train_config
        result = run_training(net, task, schema.inputs, train_rows, valid_rows, cfg, callbacks, warps, keep)
        self.rank_ = result["global_rank"]  # in a distributed run, only rank 0 writes the model folder
        self._checkpoint_done = self.train_config.checkpoint_dir  # removed once the model folder is written
        self.schema = schema
        self.engine = InferenceEngine(schema, preprocessor, task, net, cache_dir=self.cache_dir)
        return result

    def tune(self, train: Any, output: str | os.PathLike[str], **options: Any) -> MultimodalPredictor:
        """Deprecated: use `polymodal.tune(train, label, output, config=...)`, which returns the study's summary
        (`best_folder` to load). Kept for one release; the import contract names it as its only exception."""
        import warnings

        from polymodal.studies.tune import tune_predictor

        warnings.warn(
            "MultimodalPredictor.tune is deprecated and will be removed in the next release: use "
            "polymodal.tune(train, label, output, config=...) and MultimodalPredictor.load(summary['best_folder'])",
            DeprecationWarning,
            stacklevel=2,
        )
        return tune_predictor(self, train, output, **options)

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
            raise UserError("predict_proba is for classification; this model does regression")
        df, out, _ = self._outputs(data, on_bad_rows)
        return pd.DataFrame(out, columns=[str(c) for c in engine.task.classes], index=df.index)

    def predict(self, data: Any, on_bad_rows: str = "error") -> pd.Series:
        engine = self._require_fitted()
        df, out, _ = self._outputs(data, on_bad_rows)
        return pd.Series(engine.task.decode(out), index=df.index, name=self.label)

    def predict_text(self, data: Any, on_bad_rows: str = "error", **generation: Any) -> pd.DataFrame:
        """A text model's text and score per row; `n_best` > 1 adds text_1, score_1, ... (`generation`: beam_size,
        length_penalty, no_repeat_ngram, n_best over the config's)."""
        from polymodal.tasks.text import engine_generation, text_frame

        with engine_generation(self._require_fitted(), generation):
            df, out, _ = self._outputs(data, on_bad_rows)
        return text_frame(self.engine.task, out, df.index)

    def evaluate(self, data: Any, group_by: str | None = None) -> dict[str, Any]:
        """Metrics on a labelled table (accuracy, precision, recall, F1, AUROC, confusion matrix; RMSE, MAE, R2).
        `group_by` (default: the config's `data.group_by`, else its `data.split_by` when the table has that
        column): a column whose values get their own metrics too, under `groups`."""
        from polymodal.data.validate import check_group_column
        from polymodal.evaluation.groups import group_metrics

        engine = self._require_fitted()
        group_by = group_by or self.config_.data.group_by
        if self.streams(data):
            return self._evaluate_streaming(data, group_by)
        table = read_table(data)
        group_by = group_by or self._split_groups(table[0])
        check_group_column(table[0], group_by, table_name(data))
        df, media, frozen, problems = self._load_rows(data, engine.pipeline, training=False, table=table)
        features = engine.pipeline.features(df, media, frozen)
        outputs = engine.outputs(features)
        metrics = engine.task.metrics(df[engine.schema.label], outputs)
        if group_by:
            metrics["groups"] = group_metrics(engine.task, df[engine.schema.label], outputs, df[group_by])
            metrics["group_by"] = group_by
        return metrics | {"data": fingerprint(df), "dropped_rows": len({p.row for p in problems})}

    def _split_groups(self, df: pd.DataFrame) -> str | None:
        """The groups a model was validated on (`data.split_by`) score per group too, where the table names them."""
        split_by = self.config_.data.split_by
        return split_by if split_by and split_by in df.columns else None

    def _evaluate_streaming(self, data: Any, group_by: str | None) -> dict[str, Any]:
        from polymodal.data.stream import head, table_dir
        from polymodal.data.validate import check_group_column
        from polymodal.evaluation.groups import group_metrics
        from polymodal.training.data import StreamRows

        engine = self._require_fitted()
        first = head(data, 1000)
        group_by = group_by or self._split_groups(first)
        check_group_column(first, group_by, table_name(data))
        check_columns(first, engine.schema, training=False)
        rows = StreamRows(data, table_dir(data), engine.pipeline, engine.task, engine.schema.label,
                          self.config_.data.chunk_rows, on_bad_rows=self.config_.data.on_bad_rows)  # fmt: skip
        done = self._stream_outputs(rows, group_by)
        metrics = engine.task.metrics(done["y"], done["outputs"])
        if group_by:
            metrics["groups"] = group_metrics(engine.task, done["y"], done["outputs"], done["groups"])
            metrics["group_by"] = group_by
        return metrics | {"data": done["data"], "dropped_rows": done["dropped"], "streaming": True}

    def predict_file(self, data: Any, output: str | os.PathLike[str], on_bad_rows: str = "error") -> int:
        """Write predictions for every row of `data` to the CSV `output`: the input columns, `prediction`, and
        `proba_<class>` per class. A table that streams is read, predicted and written chunk by chunk, so it
        can be larger than memory. Written atomically; returns the number of rows."""

        from polymodal.data.stream import iter_chunks, table_dir
        from polymodal.tasks.text import text_frame

        engine = self._require_fitted()
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        chunks = iter_chunks(data, self.config_.data.chunk_rows) if self.streams(data) else [read_table(data)[0]]
        base = table_dir(data)
        fd, tmp = make_temp_file(output)  # the umask's mode, not mkstemp's 0600
        os.close(fd)
        n = 0
        try:
            for chunk in chunks:
                df = chunk.reset_index(drop=True)
                features, problems = engine.features(df, base, on_bad_rows=on_bad_rows)
                for p in problems:
                    log.warning("row %d, column %r: %s; predicted without it", n + p.row, p.column, p.reason)
                out = df.copy()
                outputs = engine.outputs(features)
                out["prediction"] = engine.task.decode(outputs)
                if engine.task.is_text:  # the score, and every hypothesis when n-best was asked for
                    out = out.drop(columns="prediction").join(text_frame(engine.task, outputs, out.index))
                if engine.task.is_classification:
                    for j, c in enumerate(engine.task.classes):
                        out[f"proba_{c}"] = outputs[:, j]
                out.to_csv(tmp, index=False, mode="a" if n else "w", header=n == 0)
                n += len(df)
            os.replace(tmp, output)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return n

    # ---- persistence -------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """config.json: the config tree (`config`) plus what fitting decided (schema, task, inputs, encoders)."""
        engine = self._require_fitted()
        if engine.runtime == "onnx":  # an exported graph carries the config.json of the model it was made from
            return self._graph_config
        return {
            "format": CONFIG_FORMAT,
            "polymodal_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": platform.python_version(),
            "config": self.config_.to_dict(),
            "schema": engine.schema.to_dict(),
            "task": engine.task.to_dict(),
            # A structurally pruned model keeps its shrunken sizes (see polymodal/optimize/compress.py).
            "input_specs": getattr(self, "input_specs_", None) or engine.preprocessor.input_specs(),
            "encoders": {
                name: {"modality": m.value, "class": type(enc).__name__}
                | self._encoder_record(engine.preprocessor.config.pretrained.get(name))
                for (name, m), enc in zip(engine.schema.inputs.items(), engine.net.encoders.values(), strict=True)
            },
        } | ({"compression": self.compression_} if getattr(self, "compression_", None) else {})

    @staticmethod
    def _encoder_record(p: dict[str, Any] | None) -> dict[str, Any]:
        """What a saved model needs to find its pretrained encoder again: name, fingerprint, revision, mode."""
        if p is None:
            return {"kind": "scratch"}
        return {"kind": p["mode"], "encoder": p["ref"]["name"], "fingerprint": p["ref"]["fingerprint"],
                "revision": p["ref"]["revision"], "path": p["ref"]["path"], "lora": p.get("lora", False)}  # fmt: skip

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the model folder atomically (temporary sibling folder, then rename). Fine-tuned encoders' weights
        are in model.safetensors; their config and tokenizer/processor files are copied to encoders/<column>/ so
        the folder rebuilds them without the original download."""
        from polymodal.model.artifact import save_folder

        engine = self._require_fitted()
        if getattr(self, "rank_", 0) != 0:  # a distributed run: rank 0 writes the folder, the others nothing
            return Path(folder)
        extra: dict[str, Path] = {}
        for name, p in engine.preprocessor.config.pretrained.items():
            if p["mode"] == "finetune" and p["ref"]["kind"] == "hf":
                src = Path(p["ref"]["path"])
                for f in src.iterdir():
                    if f.is_file() and not f.name.endswith(
                        (".safetensors", ".bin", ".pth", ".pt", ".h5", ".onnx", ".msgpack")
                    ):
                        extra[f"encoders/{engine.net.keys[name]}/{f.name}"] = f
        state = engine.net.state_dict()
        if getattr(self, "_float_net", None) is not None:  # loaded from an int8 folder: written back as int8
            from polymodal.model.quantized import int8_keys, int8_state

            state = int8_state(self._float_net.state_dict(), int8_keys(self._float_net))
        with tempfile.TemporaryDirectory(prefix="polymodal-save-") as scratch:
            decoder_files = getattr(getattr(engine.net, "head", None), "save_files", None)
            if decoder_files is not None:  # a pretrained decoder's config and tokenizer, so load needs no download
                extra |= decoder_files(Path(scratch))
            if self.dropped_:  # the report of the rows fit left out, copied into the folder
                extra[DROPPED_REPORT] = Path(scratch) / DROPPED_REPORT
                write_report(self.dropped_, extra[DROPPED_REPORT])
            saved = save_folder(Path(folder), self.config(), state, engine.preprocessor.to_dict(), self.metrics_, extra)
        if getattr(self, "_checkpoint_done", None):  # the training it protected is safely written now
            import shutil

            shutil.rmtree(self._checkpoint_done, ignore_errors=True)
            self._checkpoint_done = None
        return saved

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike[str],
        device: str = "cpu",
        cache_dir: str | os.PathLike[str] | None = None,
        runtime: str = "torch",
    ) -> MultimodalPredictor:
        """Rebuild the exact model from its folder (safetensors weights, JSON everything else). `cache_dir`: the
        feature cache of its frozen encoders (default: ~/.cache/polymodal), e.g. the one it was fitted with.
        `runtime="onnx"`: `folder` is an exported .onnx graph (or a folder with model.onnx), run by ONNX Runtime
        through the same engine, without torch."""
        if runtime == "onnx":
            return cls._load_onnx(folder, cache_dir)
        if runtime != "torch":
            raise UserError(f"unknown runtime {runtime!r}; choose torch or onnx")
        from polymodal.model.folder import load_model

        return cls._from_loaded(load_model(folder, device, cache_dir), check=True)

    @classmethod
    def _load_onnx(
        cls, path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None, threads: int | None = None
    ) -> MultimodalPredictor:
        """A predictor over an exported ONNX graph (ONNX Runtime with `threads` intra-op threads, default: its
        own choice). Built without `__init__`'s checks, whose fusion registry imports torch."""
        from polymodal.model.folder import load_onnx_model

        return cls._from_loaded(load_onnx_model(path, cache_dir, threads), check=False)

    @classmethod
    def _from_loaded(cls, m: Any, check: bool) -> MultimodalPredictor:
        p = cls(config=m.config) if check else cls.__new__(cls)
        if not check:
            p.config_ = m.config
        p.schema, p.metrics_, p.dropped_ = m.schema, m.metrics, []
        p.input_specs_, p.compression_, p.engine = m.input_specs, m.compression, m.engine
        if m.float_net is not None:
            p._float_net = m.float_net  # what `export` traces (ONNX Runtime quantizes the graph itself)
        if m.graph_config is not None:
            p._graph_config = m.graph_config
        return p

    def info(self) -> dict[str, Any]:
        engine = self._require_fitted()
        if engine.runtime == "onnx":
            return {**self.config(), "label": self.label, "fusion": self.fusion, "runtime": "onnx",
                    "graph": str(engine.net.path), "graph_bytes": engine.net.path.stat().st_size,
                    "quantized": engine.net.quantized, "metrics": self.metrics_}  # fmt: skip
        n_params = sum(t.numel() for t in engine.net.parameters())
        per_part = {
            name: sum(t.numel() for t in enc.parameters())
            for name, enc in zip(engine.schema.inputs, engine.net.encoders.values(), strict=True)
        }
        per_part["fusion"] = sum(t.numel() for t in engine.net.fusion.parameters())
        per_part["head"] = sum(t.numel() for t in engine.net.head.parameters())
        return {
            **self.config(),
            "label": self.label,
            "fusion": self.fusion,
            "parameters": n_params,
            "parameters_by_part": per_part,
            "metrics": self.metrics_,
        }
