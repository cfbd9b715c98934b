"""The state of a running compare: `Run` (data decoded once, one seed's arrays at a time, an entry fitted or
assembled, evaluated and saved) and `StreamRun`, its streamed variant for tables larger than memory."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.data.schema import Schema
from polymodal.errors import UserError
from polymodal.evaluation.robustness import NoisyInputs, evaluate_robustness, noise_sample
from polymodal.studies.budget import Budget, cut_short
from polymodal.studies.entries import (
    CompareData,
    Entry,
    PeakMemory,
    SeedData,
    encoder_pass_seconds,
    evaluate_model,
    fit_on_features,
    keep_own_init,
    load_data,
    prepare_seed,
)
from polymodal.studies.leaderboard import OUTPUTS, TARGETS, majority_baseline, save_array

log = logging.getLogger("polymodal")


class Run:
    """The state of one compare: data decoded on first need, one seed's arrays at a time."""

    streaming = False

    def __init__(self, template: Any, options: dict, train: Any, test: Any, valid: Any, output: Path,
                 test_fraction: float, noise_levels: int, permutations: int, noise_rows: int | None):  # fmt: skip
        self.template, self.options = template, options
        self.train, self.test, self.valid = train, test, valid
        self.output, self.test_fraction = output, test_fraction
        self.noise_levels, self.permutations, self.noise_rows = noise_levels, permutations, noise_rows
        self.say: Callable[[str], None] = log.info
        self.data: CompareData | None = None
        self.sd: SeedData | None = None
        self.encoder_seconds: float | None = None
        self.task: dict | None = None
        self.majority: dict | None = None
        self.trained: dict[tuple[int, str], Any] = {}  # (seed, unimodal entry name) -> its InferenceEngine
        self.budget: Budget | None = None  # --time-limit: the compare's seconds, shared across its fits
        self.read: dict[str, tuple] = {}  # the tables `compare` read already, and the schema it inferred
        self.schema: Schema | None = None
        self.folds: list[list[str]] | None = None  # --cv groups: the held-out groups of each fold ("seed")

    def seed_data(self, seed: int) -> SeedData:
        if self.sd is None or self.sd.seed != seed:
            if self.data is None:
                self.say("reading the tables, decoding the files, running frozen encoders (once per compare)")
                test_fraction = None if self.folds else self.test_fraction
                self.data = load_data(self.template, self.train, self.test, self.valid, test_fraction,
                                      self.read, self.schema)  # fmt: skip
                self.read = {}  # decoded now: the raw tables are not needed any more
            held_out = self.folds[seed] if self.folds else None
            self.sd = prepare_seed(self.data, self.template, seed, self.noise_levels, self.noise_rows, held_out)
            if self.encoder_seconds is None:
                pass_s = encoder_pass_seconds(self.sd, self.template)
                self.encoder_seconds = self.data.decode_seconds + self.sd.preprocess_seconds + pass_s
            if self.task is None:  # the report's confusion matrix and ROC curves need the test labels
                self.task = self.sd.task.to_dict()
                save_array(self.output / TARGETS, self.sd.test_y)
                self.majority = majority_baseline(self.sd.task, self.sd.train_y, self.sd.test_y)
        return self.sd

    def folder(self, entry: Entry, seed: int) -> Path:
        return self.output / "models" / entry.slug / f"seed{seed}"

    def feature_cache(self) -> dict | None:
        """Cache hits and misses of every frozen encoder over the whole compare, the noise test's included."""
        return None if self.data is None else {k: dict(e.stats) for k, e in self.data.pipeline._extractors.items()}

    def run_entry(self, entry: Entry, seed: int, members: list[Entry], done: dict[str, dict]) -> dict[str, Any]:
        """Fit (or assemble), evaluate and save one entry; returns its result without the bookkeeping keys."""
        from polymodal.predictor import MultimodalPredictor
        from polymodal.studies.ensemble import EnsembleModel

        self.prepare(seed)
        folder = self.folder(entry, seed)
        start = time.perf_counter()
        with PeakMemory() as mem:
            if entry.kind == "ensemble":
                engines = {}
                for m in members:
                    if (seed, m.name) not in self.trained:  # trained by an earlier, interrupted run
                        self.trained[(seed, m.name)] = MultimodalPredictor.load(self.folder(m, seed)).engine
                    engines[m.inputs[0]] = self.trained[(seed, m.name)]
                model = self.stack(EnsembleModel(engines, entry.fusion), seed)
                ev = self.evaluate(model, seed)
                # An ensemble costs the training of all its members, plus the stacking fit.
                members_s = sum(done[m.name]["train_seconds"] for m in members)
                extra = {"parameters": model.parameters, "epochs": None, "history": [],
                         "train_seconds": round(members_s + time.perf_counter() - start, 3)}  # fmt: skip
            else:
                p = self.fit_entry(entry, seed)
                model = p.engine
                ev = self.evaluate(model, seed)
                if entry.kind == "unimodal":
                    self.trained[(seed, entry.name)] = model
                extra = cut_short(p.metrics_) | {
                    "parameters": sum(t.numel() for t in model.net.parameters()),
                    "train_seconds": p.metrics_["train_seconds"],
                    "epochs": p.metrics_["epochs"],
                    "history": p.metrics_["history"],
                }
        if entry.kind == "ensemble":
            model.save(folder, {m.inputs[0]: self.folder(m, seed) for m in members}, {"test": ev["metrics"]})
        else:
            p.metrics_["test"] = ev["metrics"]
            p.save(folder)
        save_array(folder / OUTPUTS, ev["outputs"])
        return extra | {
            "metrics": ev["metrics"], "infer_ms_per_sample": ev["infer_ms_per_sample"], "peak_mem_mb": mem.peak_mb,
            "gpu_peak_mb": mem.gpu_peak_mb, "robustness": ev["robustness"], "streaming": self.streaming,
            "seconds": round(time.perf_counter() - start, 3),
        }  # fmt: skip

    # What the in-memory compare does at each step (a streamed compare overrides them).
    def prepare(self, seed: int) -> None:
        self.seed_data(seed)

    def fit_entry(self, entry: Entry, seed: int) -> Any:
        from polymodal.predictor import MultimodalPredictor

        p = MultimodalPredictor(config=self.template.config_, fusion=entry.fusion, seed=seed, **entry.settings,
                                **self.time_share())  # fmt: skip
        return fit_on_features(p, self.seed_data(seed), entry.inputs)

    def time_share(self) -> dict[str, float]:
        """The next fit's `train.time_limit` under the compare's budget (none without one)."""
        if self.budget is None:
            return {}
        return {"train.time_limit": self.budget.share(self.template.config_.train.time_limit)}

    def stack(self, model: Any, seed: int) -> Any:
        sd = self.seed_data(seed)
        return model.fit_stacking(sd.valid_x, sd.valid_y)

    def evaluate(self, model: Any, seed: int) -> dict[str, Any]:
        return evaluate_model(model, self.seed_data(seed), self.permutations, self.template.config_.data.group_by)


TEST_SPLIT_SEED = 0x7E57  # a streamed compare's held-out test rows: one hashed split, the same for every seed


class StreamRun(Run):
    """A compare over a streamed table (larger than memory). Nothing can be decoded once and shared, so each entry
    is a streamed `fit` (its own one-pass preprocessing) scored chunk by chunk on every test row; the robustness
    measures (missing inputs, noise, permutation) use a fixed sample of `noise_rows` test rows held in memory.
    Without a test table, the test rows are a hashed `test_fraction` of the training table (`TableSplit`), the
    same rows for every seed; the validation rows of each seed are hashed from the rest."""

    streaming = True

    def __init__(self, *args: Any, schema: Schema, **kwargs: Any):
        from polymodal.data.stream import TableSplit, table_dir

        super().__init__(*args, **kwargs)
        if self.noise_rows is None:
            raise UserError(
                "a streamed compare measures robustness on a sample of the test rows held in memory: give "
                "noise_rows (--noise-rows N) instead of every row"
            )
        self.schema = schema
        if self.test is None:
            self.test = TableSplit(self.train, self.test_fraction, TEST_SPLIT_SEED, held_out=True)
            self.train = TableSplit(self.train, self.test_fraction, TEST_SPLIT_SEED, held_out=False)
        self.test_dir = table_dir(self.test)
        self.bad_test_rows: frozenset[int] | None = None  # found by the first entry's check of the test rows
        self.sample: pd.DataFrame | None = None
        self.pipeline: Any = None  # the full pipeline the test rows were checked with (its cache statistics)
        self.noisy_frozen: dict = {}

    def check_test_rows(self) -> None:
        """One pass over the test rows with every input's decoder: bad rows raise (naming each) or are left out
        of every entry's scores alike (on_bad_rows=skip); then a fixed sample of the rest for the robustness."""
        from polymodal.data.stream import head, iter_chunks, table_dir
        from polymodal.data.validate import BadRowsError, Problem, check_columns, check_labels
        from polymodal.training.table import HEAD_ROWS, TrainTable, start_pipeline

        cfg = self.template.config_.data
        self.say("checking every test row's files (once per compare)")
        first = head(self.test, 1000)
        check_columns(first, self.schema, training=False)
        base = table_dir(self.train)
        table = TrainTable(self.train, head(self.train, HEAD_ROWS), base, self.schema, streaming=True)
        self.pipeline = start_pipeline(self.template.config_, table, self.template.cache_dir, progress=True)
        problems: list[Problem] = []
        good: list[np.ndarray] = []
        for chunk in iter_chunks(self.test, cfg.chunk_rows):
            flat = chunk.reset_index(drop=True)
            _, _, more = self.pipeline.decode(flat, self.test_dir)
            found = check_labels(flat, self.schema) + more
            found = [Problem(int(chunk.index[p.row]), p.column, p.reason) for p in found]
            problems += found
            good.append(np.setdiff1d(chunk.index.to_numpy(), [p.row for p in found]))
        rows = np.concatenate(good) if good else np.zeros(0, dtype=np.int64)
        if problems and (cfg.on_bad_rows == "error" or len(rows) == 0):
            raise BadRowsError(sorted(problems, key=lambda p: (p.row, p.column)), str(self.test))
        if problems:
            log.warning("leaving %d bad test row(s) of %s out of every score", len({p.row for p in problems}),
                        self.test)  # fmt: skip
        self.bad_test_rows = frozenset(p.row for p in problems)
        chosen = rows if len(rows) <= self.noise_rows else rows[noise_sample(len(rows), self.noise_rows)]
        wanted = set(chosen.tolist())
        parts = [c[c.index.isin(wanted)] for c in iter_chunks(self.test, cfg.chunk_rows)]
        self.sample = pd.concat(parts).reset_index(drop=True)

    def _rows(self, source: Any, model: Any, part: str = "all", seed: int = 0, skip: frozenset[int] = frozenset()):
        from polymodal.data.stream import table_dir
        from polymodal.training.data import StreamRows

        d = self.template.config_.data
        return StreamRows(source, table_dir(source), model.pipeline, model.task, self.schema.label, d.chunk_rows,
                          part=part, valid_fraction=d.valid_fraction, seed=seed, on_bad_rows=d.on_bad_rows,
                          skip_rows=skip)  # fmt: skip

    def evaluate(self, model: Any, seed: int) -> dict[str, Any]:
        """Test metrics on every test row (streamed) and robustness on the in-memory sample of them."""
        from polymodal.evaluation.groups import group_metrics
        from polymodal.training.data import stream_outputs

        group_by = self.template.config_.data.group_by
        done = stream_outputs(self._rows(self.test, model, skip=self.bad_test_rows), model, group_by)
        task = model.task
        metrics = task.metrics(done["y"], done["outputs"]) | {"data": done["data"]}
        if group_by:
            metrics["groups"] = group_metrics(task, done["y"], done["outputs"], done["groups"])
        pipeline = model.pipeline
        media, frozen, _ = pipeline.decode(self.sample, self.test_dir)
        feats = pipeline.features(self.sample, media, frozen)
        start = time.perf_counter()
        model.outputs(feats)
        infer_ms = 1000.0 * (time.perf_counter() - start) / max(1, len(feats))
        noisy = NoisyInputs(
            pipeline.preprocessor, self.sample, media, self.noise_levels, pipeline=pipeline, base_dir=self.test_dir,
            frozen_memo=self.noisy_frozen,
        ) if self.noise_levels > 0 else None  # fmt: skip
        y = task.encode_targets(self.sample[self.schema.label])
        robustness = evaluate_robustness(model, feats, y, noisy, self.permutations, seed=seed)
        robustness["sample_rows"] = len(self.sample)  # a streamed compare's robustness is measured on this sample
        if self.task is None:  # the report's confusion matrix and ROC curves need the test labels
            self.task = task.to_dict()
            save_array(self.output / TARGETS, task.encode_targets(done["y"]))
            self.majority = self.majority_class(model, done["y"])
        return {"metrics": metrics, "outputs": done["outputs"], "infer_ms_per_sample": round(infer_ms, 4),
                "robustness": robustness}  # fmt: skip

    def majority_class(self, model: Any, test_y: pd.Series) -> dict[str, Any]:
        """The majority baseline from the training rows' labels (one pass over the label column)."""
        from polymodal.data.stream import iter_chunks
        from polymodal.data.validate import check_labels

        label, labels = self.schema.label, []
        for chunk in iter_chunks(self.train, self.template.config_.data.chunk_rows, columns=[label]):
            flat = chunk.reset_index(drop=True)
            bad = {p.row for p in check_labels(flat, self.schema)}
            labels.append(flat.drop(index=list(bad))[label])
        y = pd.concat(labels, ignore_index=True)
        if model.task.is_classification:
            y = y[y.astype(str).isin([str(c) for c in model.task.classes])]
        return majority_baseline(model.task, model.task.encode_targets(y), model.task.encode_targets(test_y))

    def prepare(self, seed: int) -> None:
        if self.bad_test_rows is None:
            self.check_test_rows()

    def fit_entry(self, entry: Entry, seed: int) -> Any:
        """A streamed fit on the entry's inputs: the other inputs' columns are left out, the schema is the one
        inferred for the compare (every entry sees the same column kinds)."""
        from polymodal.evaluation.subset import input_columns
        from polymodal.predictor import MultimodalPredictor

        p = MultimodalPredictor(config=self.template.config_, fusion=entry.fusion, seed=seed, streaming="on",
                                **entry.settings, **self.time_share())  # fmt: skip
        keep_own_init(p, entry.inputs)
        d = p.config_.data
        d.modalities = {c: m.value for c, m in self.schema.columns.items()}
        others = [n for n in self.schema.inputs if n not in entry.inputs]
        d.ignore = list(dict.fromkeys(d.ignore + [c for n in others for c in input_columns(self.schema, n)]))
        return p._fit(self.train, self.valid, None)  # the tables were anonymized already, when asked

    def stack(self, model: Any, seed: int) -> Any:
        return model.fit_stacking_outputs(*self.member_outputs(model, seed)) if model.mode == "stack" else model

    def member_outputs(self, model: Any, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ensemble members' outputs on this seed's validation rows, chunk by chunk (for stacking)."""
        if self.valid is None:
            rows = self._rows(self.train, model, part="valid", seed=seed)
        else:
            rows = self._rows(self.valid, model)
        xs, masks, ys = [], [], []
        for chunk in rows.chunks():
            kept, features, _ = rows.features(chunk)
            x, mask = model.member_outputs(features)
            xs, masks, ys = xs + [x], masks + [mask], ys + [kept[self.schema.label]]
        if not xs:
            raise UserError(f"no validation row of {rows.source} could be read for stacking")
        return np.concatenate(xs), np.concatenate(masks), model.task.encode_targets(pd.concat(ys, ignore_index=True))

    def feature_cache(self) -> dict | None:
        return None if self.pipeline is None else {k: dict(e.stats) for k, e in self.pipeline._extractors.items()}
