"""A compare's entries and data: which models it trains (`plan_entries`), the tables read, decoded and run
through the frozen encoders once per compare (`load_data`), one seed's preprocessed arrays shared by every entry
of that seed (`prepare_seed`), and how an entry is measured (memory, encoder pass, test metrics, robustness)."""

from __future__ import annotations

import copy
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.data.io import read_table
from polymodal.data.schema import Schema
from polymodal.errors import UserError
from polymodal.evaluation.robustness import NoisyInputs, evaluate_robustness, noise_sample
from polymodal.evaluation.subset import select_features, sub_preprocessor, sub_schema
from polymodal.preprocess import Features, Preprocessor
from polymodal.tasks import Task
from polymodal.training.table import TrainTable, infer, load_rows, split_rows, start_pipeline

log = logging.getLogger("polymodal")

UNIMODAL_FUSION = "early"  # with one input, early fusion is just that input's encoder and the task head
ENSEMBLES = ("ensemble-average", "ensemble-stack")


def fusion_choices() -> list[str]:
    from polymodal.fusion import FUSIONS

    return list(FUSIONS) + list(ENSEMBLES)


def parse_fusions(fusions: str | list[str]) -> list[str]:
    """'all', or a comma-separated list / a list of fusion names and ensemble-average / ensemble-stack."""
    choices = fusion_choices()
    names = [f.strip() for f in (fusions.split(",") if isinstance(fusions, str) else fusions) if f.strip()]
    if names == ["all"]:
        return choices
    unknown = [f for f in names if f not in choices]
    if unknown:
        raise UserError(f"unknown fusion(s) {unknown}; choose 'all' or among {choices}")
    return list(dict.fromkeys(names))


@dataclass
class Entry:
    name: str
    kind: str  # unimodal | fusion | ensemble
    inputs: list[str]
    fusion: str  # the fusion strategy, or the ensemble mode
    settings: dict[str, Any] = field(default_factory=dict)  # the entry's own config settings (dotted paths)

    @property
    def slug(self) -> str:
        return re.sub(r"[^0-9A-Za-z_.-]+", "_", self.name)


def plan_entries(inputs: list[str], fusions: list[str], video: bool = False) -> list[Entry]:
    """Unimodal baselines first (the ensembles need them), then the fusions, then the ensembles. With a `video`
    input, also the first fusion with the frames averaged over time: what a model blind to their order reaches."""
    entries = [Entry(f"{n} only", "unimodal", [n], UNIMODAL_FUSION) for n in inputs]
    if len(inputs) < 2:
        return entries  # nothing to fuse
    for f in fusions:
        if f in ENSEMBLES:
            entries.append(Entry(f, "ensemble", list(inputs), f.split("-", 1)[1]))
        else:
            entries.append(Entry(f, "fusion", list(inputs), f))
    fused = [f for f in fusions if f not in ENSEMBLES]
    if video and fused:
        entries.append(Entry(f"{fused[0]} order-blind", "fusion", list(inputs), fused[0],
                             {"encoders.video.temporal": "mean"}))  # fmt: skip
    return entries


# ---- data, decoded once ---------------------------------------------------------------------------------
@dataclass
class Split:
    df: pd.DataFrame
    media: dict[str, list]
    frozen: dict[str, tuple[np.ndarray, np.ndarray]]  # frozen pretrained inputs: (embeddings, present)
    base_dir: Path  # where the table's relative file paths start


@dataclass
class CompareData:
    schema: Schema
    preprocessor: Preprocessor  # holds only the pretrained inputs' settings; fitted per seed
    train: Split
    test: Split | None  # None: each fold of `compare --cv groups` holds out its own groups (`prepare_seed`)
    valid: Split | None
    dropped_rows: int
    decode_seconds: float
    pipeline: Any  # the FeaturePipeline that ran the frozen encoders (the noise test embeds through it again)
    noisy_frozen: dict = field(default_factory=dict)  # noisy frozen embeddings, shared by every seed


@dataclass
class SeedData:
    """One seed's preprocessed arrays, shared by every entry of that seed."""

    seed: int
    schema: Schema
    preprocessor: Preprocessor
    task: Task
    df: pd.DataFrame
    vdf: pd.DataFrame
    test_df: pd.DataFrame
    train_x: Features
    valid_x: Features
    test_x: Features
    train_y: np.ndarray
    valid_y: np.ndarray
    test_y: np.ndarray
    noisy: NoisyInputs | None
    dropped_rows: int
    preprocess_seconds: float


def load_data(
    template: Any,
    train: Any,
    test: Any | None,
    valid: Any | None,
    test_fraction: float | None,
    read: dict[str, tuple] | None = None,
    schema: Schema | None = None,
) -> CompareData:
    """Read and validate the tables once, decode their media and run the frozen pretrained encoders once (through
    the feature cache), with the predictor's own checks and bad-row policy, as `MultimodalPredictor.fit` does.
    `read`: the tables `compare` read already ("train", "valid", "test" -> (table, folder)), with the `schema`
    it inferred from the training table: they are not read or inferred again. `test_fraction` None and no `test`:
    no test split here (the folds of `compare --cv groups` take theirs)."""
    from polymodal.predictor import MultimodalPredictor

    start = time.perf_counter()
    # The encoder pass can take minutes on a large table: it shows a progress bar even when training does not.
    cfg = template.config_
    read = read or {}
    df, base_dir = read.get("train") or read_table(train)
    table = TrainTable(train, df, base_dir, schema or infer(cfg, df), streaming=False)
    schema = table.schema
    pipeline = start_pipeline(cfg, table, template.cache_dir, progress=True)
    base = pipeline.preprocessor
    df, media, frozen, problems = load_rows(cfg, train, pipeline, training=True, table=(df, base_dir), checked=True)
    dropped = len({p.row for p in problems})
    vsplit = None
    if valid is not None:
        vtable = read.get("valid") or read_table(valid)
        vdf, vmedia, vfrozen, vproblems = template._load_rows(valid, pipeline, training=False, table=vtable)
        vsplit, dropped = Split(vdf, vmedia, vfrozen, vtable[1]), dropped + len({p.row for p in vproblems})
    if test is None and test_fraction is None:
        return CompareData(schema, base, Split(df, media, frozen, base_dir), None, vsplit, dropped,
                           time.perf_counter() - start, pipeline)  # fmt: skip
    if test is not None:
        ttable = read.get("test") or read_table(test)
        tdf, tmedia, tfrozen, tproblems = template._load_rows(test, pipeline, training=False, table=ttable)
        dropped += len({p.row for p in tproblems})
        test_dir = ttable[1]
    else:
        # One held-out test split for every seed and entry, stratified like the predictor's validation split.
        splitter = MultimodalPredictor(label=template.label, valid_fraction=test_fraction, seed=0)  # one split
        (df, media, frozen), (tdf, tmedia, tfrozen) = split_rows(splitter.config_, df, media, frozen, schema)
        test_dir = base_dir
    return CompareData(schema, base, Split(df, media, frozen, base_dir), Split(tdf, tmedia, tfrozen, test_dir),
                       vsplit, dropped, time.perf_counter() - start, pipeline)  # fmt: skip


def prepare_seed(
    data: CompareData,
    template: Any,
    seed: int,
    noise_levels: int,
    noise_rows: int | None = None,
    held_out: list[str] | None = None,
) -> SeedData:
    """Split (unless a validation table was given), fit the preprocessing on that seed's training rows, and
    transform every split once for all the entries of the seed. Frozen pretrained inputs arrive as embeddings
    already (computed once per compare in `load_data`), so only the fusions and heads train on them.
    The noise is the same for every seed (noise seed 0), so every entry meets identical corruptions and the
    noisy frozen embeddings are computed once per compare. `held_out`: the groups (`data.split_by` values) that
    are this fold's test rows; the rest train and validate (`compare --cv groups`)."""
    from polymodal.model.pipeline import take_rows

    start = time.perf_counter()
    schema = data.schema
    tr, test, memo = data.train, data.test, data.noisy_frozen
    if held_out is not None:
        out = tr.df[template.config_.data.split_by].astype(str).isin(held_out).to_numpy()
        test = Split(*take_rows(tr.df, tr.media, tr.frozen, np.flatnonzero(out)), tr.base_dir)
        tr = Split(*take_rows(tr.df, tr.media, tr.frozen, np.flatnonzero(~out)), tr.base_dir)
        memo = data.noisy_frozen.setdefault(tuple(held_out), {})  # noisy embeddings of this fold's rows
    if data.valid is None:
        template.train_config.seed = seed
        (df, media, frozen), (vdf, vmedia, vfrozen) = split_rows(template.config_, tr.df, tr.media, tr.frozen, schema)
    else:
        (df, media, frozen), (vdf, vmedia, vfrozen) = (
            (tr.df, tr.media, tr.frozen),
            (data.valid.df, data.valid.media, data.valid.frozen),
        )
    if schema.problem_type.is_classification and df[schema.label].nunique() < 2:
        raise UserError(f"the label {schema.label!r} has a single class in the training rows")
    pre = Preprocessor(schema, data.preprocessor.config)
    pre.state = copy.deepcopy(data.preprocessor.state)  # the pretrained inputs' settings; fit adds the rest
    pre.fit(df, media)
    task = Task.fit(schema.problem_type, df[schema.label], template.config_.decoder,
                    any(m.value == "audio" for m in schema.inputs.values()), schema.empty_label)  # fmt: skip
    sd = SeedData(
        seed=seed, schema=schema, preprocessor=pre, task=task, df=df, vdf=vdf, test_df=test.df,
        train_x=pre.transform(df, media, frozen), valid_x=pre.transform(vdf, vmedia, vfrozen),
        test_x=pre.transform(test.df, test.media, test.frozen),
        train_y=task.encode_targets(df[schema.label]), valid_y=task.encode_targets(vdf[schema.label]),
        test_y=task.encode_targets(test.df[schema.label]),
        noisy=NoisyInputs(
            pre, test.df, test.media, noise_levels, rows=noise_sample(len(test.df), noise_rows),
            pipeline=data.pipeline, base_dir=test.base_dir, frozen_memo=memo,
        ) if noise_levels > 0 else None,
        dropped_rows=data.dropped_rows, preprocess_seconds=0.0,
    )  # fmt: skip
    sd.preprocess_seconds = time.perf_counter() - start
    return sd


def keep_own_init(p: Any, inputs: list[str]) -> None:
    """`encoders.init_from` and `encoders.readout` restricted to an entry's inputs: the sound-only entry starts its
    sound encoder from the sound branch's fit and has no frames to start (a plain fit naming none of its inputs is
    an error)."""
    enc = p.config_.encoders
    enc.init_from = {k: v for k, v in enc.init_from.items() if k in inputs}
    enc.readout = {k: v for k, v in enc.readout.items() if k in inputs}


def fit_on_features(p: Any, sd: SeedData, inputs: list[str]) -> Any:
    """`MultimodalPredictor.fit` from the point where the data is decoded and preprocessed, on the seed's shared
    arrays restricted to `inputs`. The predictor ends up exactly as `fit` leaves it (saveable, loadable)."""
    keep_own_init(p, inputs)
    schema = sub_schema(sd.schema, inputs)
    pre = sub_preprocessor(sd.preprocessor, schema)
    names = list(schema.inputs)
    train_x, valid_x = select_features(sd.train_x, names), select_features(sd.valid_x, names)
    p.fit_features(schema, pre, sd.task, train_x, sd.train_y, valid_x, sd.vdf)
    p.config_.data.ignore, p.dropped_ = list(schema.ignored), []
    p.metrics_["dropped_rows"] = sd.dropped_rows
    return p


# ---- measuring ----------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB; a peak, not current


class PeakMemory:
    """Peak memory an entry adds: resident memory sampled every 20 ms, minus its level at the start (MB).

    In one process the entries share the decoded data and the interpreter, so the growth during an entry is
    what that entry costs; on a GPU the CUDA allocator's own peak is reported too."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak_mb, self.gpu_peak_mb = interval, 0.0, None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        import torch

        self._base = self._peak = _rss_bytes()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        import torch

        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        self.peak_mb = round(max(0, self._peak - self._base) / 2**20, 1)
        if torch.cuda.is_available():
            self.gpu_peak_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def encoder_pass_seconds(sd: SeedData, template: Any) -> float:
    """One forward pass of every (freshly built) encoder over all rows: what frozen encoders would cost once. A
    readout input's encoder is its text model, decoding (polymodal/model/readout.py)."""
    import torch

    from polymodal.model.batch import iterate_batches
    from polymodal.model.folder import build_net

    net = build_net(template.config_, sd.schema, sd.preprocessor.input_specs(), sd.task, init=True,
                    state=sd.preprocessor.state).eval()  # fmt: skip
    start = time.perf_counter()
    with torch.inference_mode():
        for feats in (sd.train_x, sd.valid_x, sd.test_x):
            for batch in iterate_batches(feats, 256):
                for name in sd.schema.inputs:
                    net.encoders[net.keys[name]](batch["inputs"][name])
    return time.perf_counter() - start


def evaluate_model(model: Any, sd: SeedData, permutations: int, group_by: str | None = None) -> dict[str, Any]:
    """Test metrics (per value of the `group_by` column too), inference time and robustness of one fitted model
    (an engine or an ensemble)."""
    from polymodal.data.stream import fingerprint
    from polymodal.evaluation.groups import group_metrics

    feats = select_features(sd.test_x, list(model.schema.inputs))
    start = time.perf_counter()
    outputs = model.outputs(feats)
    infer_ms = 1000.0 * (time.perf_counter() - start) / max(1, len(feats))
    metrics = sd.task.metrics(sd.test_df[sd.schema.label], outputs) | {"data": fingerprint(sd.test_df)}
    if group_by:
        metrics["groups"] = group_metrics(sd.task, sd.test_df[sd.schema.label], outputs, sd.test_df[group_by])
    robustness = evaluate_robustness(model, sd.test_x, sd.test_y, sd.noisy, permutations, seed=sd.seed)
    return {"metrics": metrics, "outputs": outputs, "infer_ms_per_sample": round(infer_ms, 4), "robustness": robustness}
