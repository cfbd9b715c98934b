"""`polymodal compare`: the fusion leaderboard on the user's own data.

Trains every unimodal baseline (the same model with the other inputs left out), every selected fusion and the
late ensembles of the unimodal models, over K seeds on the same splits; measures the task metric, macro-F1,
parameters, train seconds, inference ms/sample and peak memory, plus robustness to missing and noisy
modalities and each modality's contribution (see robustness.py). Writes a ranked leaderboard (CSV, JSON),
one model folder per entry and seed, and report.html.

Sharing work between entries: the tables are read, every image/audio file decoded and every frozen pretrained
encoder run (through the feature cache) once per compare; the preprocessing is fitted and applied once per seed
(it depends on that seed's training rows) and its arrays are shared by every entry of the seed, as are the noisy
test inputs. Scratch and fine-tuned encoders train end to end inside each model, so they have no output to share.

Resuming: each entry's result is written (atomically) after its model folder; a re-run with the same data and
settings skips every entry whose result is there, so an interrupted compare picks up where it stopped.

This module orchestrates `MultimodalPredictor`s, so like the facade it sits on top of the other layers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.version import __version__
from polymodal.data.io import read_table
from polymodal.data.schema import Modality, Schema, infer_schema
from polymodal.errors import UserError
from polymodal.evaluation.robustness import NoisyInputs, check_noise_rows, evaluate_robustness, noise_sample
from polymodal.evaluation.subset import select_features, sub_preprocessor, sub_schema
from polymodal.model.artifact import read_json, write_json
from polymodal.preprocess import Features, Preprocessor
from polymodal.tasks import Task

log = logging.getLogger("polymodal")

UNIMODAL_FUSION = "early"  # with one input, early fusion is just that input's encoder and the task head
ENSEMBLES = ("ensemble-average", "ensemble-stack")
RESULT, OUTPUTS, TARGETS = "compare_result.json", "test_outputs.npy", "test_targets.npy"
LEADERBOARD = "leaderboard"
REPORT = "report.html"


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

    @property
    def slug(self) -> str:
        return re.sub(r"[^0-9A-Za-z_.-]+", "_", self.name)


def plan_entries(inputs: list[str], fusions: list[str]) -> list[Entry]:
    """Unimodal baselines first (the ensembles need them), then the fusions, then the ensembles."""
    entries = [Entry(f"{n} only", "unimodal", [n], UNIMODAL_FUSION) for n in inputs]
    if len(inputs) < 2:
        return entries  # nothing to fuse
    for f in fusions:
        if f in ENSEMBLES:
            entries.append(Entry(f, "ensemble", list(inputs), f.split("-", 1)[1]))
        else:
            entries.append(Entry(f, "fusion", list(inputs), f))
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
    test: Split
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


def load_data(template: Any, train: Any, test: Any | None, valid: Any | None, test_fraction: float) -> CompareData:
    """Read and validate the tables once, decode their media and run the frozen pretrained encoders once (through
    the feature cache), with the predictor's own checks and bad-row policy, as `MultimodalPredictor.fit` does."""
    from polymodal.predictor import MultimodalPredictor

    start = time.perf_counter()
    # The encoder pass can take minutes on a large table: it shows a progress bar even when training does not.
    table, schema, pipeline = template._start(train, progress=True)
    base = pipeline.preprocessor
    df, media, frozen, problems = template._load_rows(train, pipeline, training=True, table=table)
    dropped = len({p.row for p in problems})
    vsplit = None
    if valid is not None:
        vtable = read_table(valid)
        vdf, vmedia, vfrozen, vproblems = template._load_rows(valid, pipeline, training=False, table=vtable)
        vsplit, dropped = Split(vdf, vmedia, vfrozen, vtable[1]), dropped + len({p.row for p in vproblems})
    if test is not None:
        ttable = read_table(test)
        tdf, tmedia, tfrozen, tproblems = template._load_rows(test, pipeline, training=False, table=ttable)
        dropped += len({p.row for p in tproblems})
        test_dir = ttable[1]
    else:
        # One held-out test split for every seed and entry, stratified like the predictor's validation split.
        splitter = MultimodalPredictor(label=template.label, valid_fraction=test_fraction, seed=0)  # one split
        (df, media, frozen), (tdf, tmedia, tfrozen) = splitter._split(df, media, frozen, schema)
        test_dir = table[1]
    return CompareData(schema, base, Split(df, media, frozen, table[1]), Split(tdf, tmedia, tfrozen, test_dir),
                       vsplit, dropped, time.perf_counter() - start, pipeline)  # fmt: skip


def prepare_seed(
    data: CompareData, template: Any, seed: int, noise_levels: int, noise_rows: int | None = None
) -> SeedData:
    """Split (unless a validation table was given), fit the preprocessing on that seed's training rows, and
    transform every split once for all the entries of the seed. Frozen pretrained inputs arrive as embeddings
    already (computed once per compare in `load_data`), so only the fusions and heads train on them.
    The noise is the same for every seed (noise seed 0), so every entry meets identical corruptions and the
    noisy frozen embeddings are computed once per compare."""
    start = time.perf_counter()
    schema = data.schema
    tr = data.train
    if data.valid is None:
        template.train_config.seed = seed
        (df, media, frozen), (vdf, vmedia, vfrozen) = template._split(tr.df, tr.media, tr.frozen, schema)
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
    task = Task.fit(schema.problem_type, df[schema.label])
    test = data.test
    sd = SeedData(
        seed=seed, schema=schema, preprocessor=pre, task=task, df=df, vdf=vdf, test_df=test.df,
        train_x=pre.transform(df, media, frozen), valid_x=pre.transform(vdf, vmedia, vfrozen),
        test_x=pre.transform(test.df, test.media, test.frozen),
        train_y=task.encode_targets(df[schema.label]), valid_y=task.encode_targets(vdf[schema.label]),
        test_y=task.encode_targets(test.df[schema.label]),
        noisy=NoisyInputs(
            pre, test.df, test.media, noise_levels, rows=noise_sample(len(test.df), noise_rows),
            pipeline=data.pipeline, base_dir=test.base_dir, frozen_memo=data.noisy_frozen,
        ) if noise_levels > 0 else None,
        dropped_rows=data.dropped_rows, preprocess_seconds=0.0,
    )  # fmt: skip
    sd.preprocess_seconds = time.perf_counter() - start
    return sd


def fit_on_features(p: Any, sd: SeedData, inputs: list[str]) -> Any:
    """`MultimodalPredictor.fit` from the point where the data is decoded and preprocessed, on the seed's shared
    arrays restricted to `inputs`. The predictor ends up exactly as `fit` leaves it (saveable, loadable)."""
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
    """One forward pass of every (freshly built) encoder over all rows: what frozen encoders would cost once."""
    import torch

    from polymodal.model.batch import iterate_batches
    from polymodal.model.network import MultimodalNet

    cfg = template.config_
    dims = {n: cfg.encoders.dim(m.value) for n, m in sd.schema.inputs.items()}
    net = MultimodalNet(
        sd.schema.inputs, sd.preprocessor.input_specs(), sd.task, UNIMODAL_FUSION, dims, cfg.fusion.hidden,
        cfg.fusion.dropout,
    ).eval()  # fmt: skip
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


# ---- files --------------------------------------------------------------------------------------------------
def _save_array(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.asarray(array), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_array(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _write_csv(path: Path, rows: list[dict]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pd.DataFrame(rows).to_csv(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _settings_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _done(folder: Path, settings: str) -> dict | None:
    """The entry's saved result if it was finished with these settings (else it is redone)."""
    path = folder / RESULT
    if not path.exists():
        return None
    try:
        result = read_json(path)
    except (OSError, ValueError):
        return None
    return result if result.get("settings") == settings else None


# ---- the leaderboard ----------------------------------------------------------------------------------------
def _mean(values: list) -> float:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def _spread(values: list[float]) -> tuple[float, float]:
    """(standard deviation, half-width of the 95 % t-interval of the mean); NaN with one seed."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) < 2:
        return float("nan"), float("nan")
    from scipy import stats

    std = float(v.std(ddof=1))
    return std, float(stats.t.ppf(0.975, len(v) - 1) * std / np.sqrt(len(v)))


def aggregate(results: list[dict], entries: list[Entry], metric: str, higher: bool) -> list[dict]:
    """One ranked row per entry: mean, std and 95 % interval over seeds, costs, robustness per input."""
    rows = []
    all_inputs = list(dict.fromkeys(n for e in entries for n in e.inputs))
    for e in entries:
        rs = [r for r in results if r["entry"] == e.name]
        if not rs:
            continue
        scores = [r["metrics"][metric] for r in rs]
        std, ci = _spread(scores)
        row: dict[str, Any] = {"rank": 0, "entry": e.name, "kind": e.kind, "inputs": "+".join(e.inputs)}
        row |= {"seeds": len(rs), f"{metric}_mean": _mean(scores), f"{metric}_std": std, f"{metric}_ci95": ci}
        if "f1_macro" in rs[0]["metrics"]:
            f1 = [r["metrics"]["f1_macro"] for r in rs]
            row |= {"f1_macro_mean": _mean(f1), "f1_macro_std": _spread(f1)[0]}
        row |= {
            "parameters": int(_mean([r["parameters"] for r in rs])),
            "train_seconds": round(_mean([r["train_seconds"] for r in rs]), 2),
            "infer_ms_per_sample": round(_mean([r["infer_ms_per_sample"] for r in rs]), 4),
            "peak_mem_mb": round(_mean([r["peak_mem_mb"] for r in rs]), 1),
        }
        for g in rs[0]["metrics"].get("groups", {}):  # the metric per group value (--group-by), mean over seeds
            row[f"group:{g}"] = _mean([r["metrics"]["groups"].get(g, {}).get(metric) for r in rs])
        for n in all_inputs:
            row[f"missing:{n}"] = _mean([r["robustness"]["missing"].get(n) for r in rs]) if n in e.inputs else None
        for n in all_inputs:
            rel = [r["robustness"].get("noise", {}).get(n, {}).get("relative_robustness") for r in rs]
            row[f"robustness:{n}"] = _mean(rel) if n in e.inputs and any(x is not None for x in rel) else None
        rows.append(row)
    key = f"{metric}_mean"
    rows.sort(key=lambda r: (-r[key] if higher else r[key], -r.get("f1_macro_mean", 0.0)))
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


def majority_baseline(task: Task, train_targets: np.ndarray, test_targets: np.ndarray) -> dict[str, Any]:
    """The test score of predicting the training rows' majority class (the training mean for regression)."""
    outputs, name = task.majority_outputs(train_targets, len(test_targets))
    return {"name": name, "score": task.score(test_targets, outputs)}


def _fmt(row: dict[str, Any], metric: str) -> str:
    std = row.get(f"{metric}_std")
    return f"{row[f'{metric}_mean']:.4f}" + ("" if std is None or std != std else f" ± {std:.4f}")


def verdict(board: dict[str, Any]) -> str:
    """One sentence: does the best fusion beat the best single input by more than the seeds' spread (the larger
    of the two standard deviations), and does any entry beat the majority class (by more than its own std)?"""
    metric, higher, rows = board["metric"], board["higher_is_better"], board["leaderboard"]
    sign = 1.0 if higher else -1.0

    def gain(row: dict[str, Any], reference: float) -> float:
        return sign * (row[f"{metric}_mean"] - reference)

    def std(row: dict[str, Any]) -> float:
        s = row.get(f"{metric}_std")
        return 0.0 if s is None or s != s else float(s)

    singles = [r for r in rows if r["kind"] == "unimodal"]
    fused = [r for r in rows if r["kind"] != "unimodal"]
    best = lambda rs: max(rs, key=lambda r: sign * r[f"{metric}_mean"])  # noqa: E731
    if fused and singles:
        f, u = best(fused), best(singles)
        spread = max(std(f), std(u))
        margin = gain(f, u[f"{metric}_mean"])
        what = f"the best fusion, {f['entry']} ({_fmt(f, metric)}), "
        ref = f"the best single input, {u['entry']} ({_fmt(u, metric)})"
        if board.get("seeds", 1) < 2:  # no spread to measure: say the difference and that it may be noise
            verb = "beats" if margin > 0 else "does not beat"
            first = what + f"{verb} {ref} (difference {margin:+.4f}), but with one seed the spread is unknown"
        elif margin > spread:
            first = what + f"beats {ref} by {margin:.4f}, more than the seeds' spread (std {spread:.4f})"
        else:
            first = what + f"does not beat {ref} by more than the seeds' spread (std {spread:.4f}; difference "
            first += f"{margin:+.4f})"
    else:
        first = "there is no fusion and single input to compare"
    majority = board.get("majority_class")
    if majority is None:
        return first[0].upper() + first[1:] + "."
    beating = [r for r in rows if gain(r, majority["score"]) > std(r)]
    base = f"the {majority['name']} ({metric} {majority['score']:.4f})"
    if not beating:
        second = f"no entry beats {base}: nothing learned a signal from these inputs"
    elif len(beating) == len(rows):
        second = f"every entry beats {base}"
    else:
        second = f"{len(beating)} of {len(rows)} entries beat {base}"
    return first[0].upper() + first[1:] + "; " + second + "."


def leaderboard_table(board: dict[str, Any]):
    """The ranked leaderboard as a rich table."""
    from rich.table import Table

    metric = board["metric"]
    t = Table(title=f"leaderboard: {metric} on the test rows, mean ± std over {board['seeds']} seed(s)")
    t.caption = board.get("verdict") or verdict(board)
    groups = [k for k in (board["leaderboard"] or [{}])[0] if k.startswith("group:")]
    cols = ["#", "entry", metric, "macro-F1", *[f"{metric} {g[6:]}" for g in groups], "params", "train s"]
    cols += ["infer ms/row", "peak MB", "rel. robustness"]
    for c in cols:
        t.add_column(c, justify="left" if c == "entry" else "right")

    def pm(m: float, s: float) -> str:
        return f"{m:.4f}" + ("" if s != s else f" ± {s:.4f}")

    for r in board["leaderboard"]:
        rel = [v for k, v in r.items() if k.startswith("robustness:") and v is not None]
        t.add_row(
            str(r["rank"]), r["entry"], pm(r[f"{metric}_mean"], r[f"{metric}_std"]),
            pm(r["f1_macro_mean"], r["f1_macro_std"]) if "f1_macro_mean" in r else "-",
            *[f"{r.get(g, float('nan')):.4f}" for g in groups],
            f"{r['parameters']:,}", f"{r['train_seconds']:.1f}", f"{r['infer_ms_per_sample']:.3f}",
            f"{r['peak_mem_mb']:.0f}", f"{np.mean(rel):.3f}" if rel else "-",
        )  # fmt: skip
    return t


# ---- the compare --------------------------------------------------------------------------------------------
class _Run:
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

    def seed_data(self, seed: int) -> SeedData:
        if self.sd is None or self.sd.seed != seed:
            if self.data is None:
                self.say("reading the tables, decoding the files, running frozen encoders (once per compare)")
                self.data = load_data(self.template, self.train, self.test, self.valid, self.test_fraction)
            self.sd = prepare_seed(self.data, self.template, seed, self.noise_levels, self.noise_rows)
            if self.encoder_seconds is None:
                pass_s = encoder_pass_seconds(self.sd, self.template)
                self.encoder_seconds = self.data.decode_seconds + self.sd.preprocess_seconds + pass_s
            if self.task is None:  # the report's confusion matrix and ROC curves need the test labels
                self.task = self.sd.task.to_dict()
                _save_array(self.output / TARGETS, self.sd.test_y)
                self.majority = majority_baseline(self.sd.task, self.sd.train_y, self.sd.test_y)
        return self.sd

    def folder(self, entry: Entry, seed: int) -> Path:
        return self.output / "models" / entry.slug / f"seed{seed}"

    def feature_cache(self) -> dict | None:
        """Cache hits and misses of every frozen encoder over the whole compare, the noise test's included."""
        return None if self.data is None else {k: dict(e.stats) for k, e in self.data.pipeline._extractors.items()}

    def run_entry(self, entry: Entry, seed: int, members: list[Entry], done: dict[str, dict]) -> dict[str, Any]:
        """Fit (or assemble), evaluate and save one entry; returns its result without the bookkeeping keys."""
        from polymodal.evaluation.ensemble import EnsembleModel
        from polymodal.predictor import MultimodalPredictor

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
                extra = {
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
        _save_array(folder / OUTPUTS, ev["outputs"])
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

        p = MultimodalPredictor(config=self.template.config_, fusion=entry.fusion, seed=seed)
        return fit_on_features(p, self.seed_data(seed), entry.inputs)

    def stack(self, model: Any, seed: int) -> Any:
        sd = self.seed_data(seed)
        return model.fit_stacking(sd.valid_x, sd.valid_y)

    def evaluate(self, model: Any, seed: int) -> dict[str, Any]:
        return evaluate_model(model, self.seed_data(seed), self.permutations, self.template.config_.data.group_by)


TEST_SPLIT_SEED = 0x7E57  # a streamed compare's held-out test rows: one hashed split, the same for every seed


class _StreamRun(_Run):
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
        from polymodal.predictor import HEAD_ROWS

        cfg = self.template.config_.data
        self.say("checking every test row's files (once per compare)")
        first = head(self.test, 1000)
        check_columns(first, self.schema, training=False)
        base = table_dir(self.train)
        _, _, self.pipeline = self.template._start(self.train, True, (head(self.train, HEAD_ROWS), base))
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
            _save_array(self.output / TARGETS, task.encode_targets(done["y"]))
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

        p = MultimodalPredictor(config=self.template.config_, fusion=entry.fusion, seed=seed, streaming="on")
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


def compare(
    train: Any,
    label: str | None,
    output: str | os.PathLike[str],
    *,
    test: Any | None = None,
    valid: Any | None = None,
    fusions: str | list[str] = "all",
    seeds: int | list[int] = 3,
    noise_levels: int = 5,
    noise_rows: int | None = 1000,
    permutations: int = 3,
    test_fraction: float = 0.2,
    report: bool = True,
    log_fn: Callable[[str], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run the leaderboard; returns what leaderboard.json holds. `seeds`: how many (0, 1, ...), or which.
    `noise_rows`: the noise curves are measured on a fixed sample of at most this many test rows (None: all);
    a frozen encoder must embed every noisy copy again, so this bounds the noise test's cost on large tables.
    `options` go to every `MultimodalPredictor` (modalities, ignore, problem_type, preprocess, embed_dim,
    max_epochs, modality_dropout, ...). Entries finished before with the same data and settings are reused, so
    separate processes may run different seeds into one folder and a last call gathers them."""
    from polymodal.data.stream import fingerprint, head, table_fingerprint
    from polymodal.predictor import MultimodalPredictor

    say = log_fn or log.info
    wall_start = time.perf_counter()
    seed_list = list(range(seeds)) if isinstance(seeds, int) else sorted(set(seeds))
    if not seed_list:
        raise UserError("seeds must be at least 1")
    check_noise_rows(noise_rows)  # before any work, not after the encoders ran
    for key in ("label", "fusion", "seed"):
        if key in options:
            raise UserError(f"{key!r} is set by compare itself")
    options = {"progress": False} | options
    template = MultimodalPredictor(label=label, **options)
    label = template.label
    streamed = template.streams(train)
    if template.config_.privacy.anonymize:  # before anything is read; the copies stay beside the output
        from polymodal.privacy import anonymize_tables

        folder = template.config_.privacy.output_dir or Path(output).parent / f"{Path(output).name}.anonymized"
        tables = anonymize_tables(template.config_, folder, say, train=train, valid=valid, test=test)
        train, valid, test = tables["train"], tables["valid"], tables["test"]
    options = {"config": template.config_.to_dict()}  # the whole tree, as JSON: what the settings hash covers
    selected = parse_fusions(fusions)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)

    # What a finished entry's result must match to be reused: the data and every setting that changes it.
    tables = {k: v for k, v in (("train", train), ("valid", valid), ("test", test)) if v is not None}
    if streamed:  # a pass over each table, chunk by chunk; the schema from the first rows, as a streamed fit does
        from polymodal.predictor import HEAD_ROWS

        fingerprints = {k: table_fingerprint(v, template.config_.data.chunk_rows) for k, v in tables.items()}
        first = head(train, HEAD_ROWS)
    else:
        frames = {k: read_table(v)[0] for k, v in tables.items()}
        fingerprints = {k: fingerprint(df) for k, df in frames.items()}
        first = frames["train"]
    data = template.config_.data
    modalities = {c: Modality(m) for c, m in data.modalities.items()}
    schema = infer_schema(first, label, modalities, data.left_out(), data.problem_type)
    if schema.problem_type.is_multilabel and any(f in ENSEMBLES for f in selected):
        say("multilabel: the late ensembles (softmax averaging and stacking) are left out")
        selected = [f for f in selected if f not in ENSEMBLES]
    entries = plan_entries(list(schema.inputs), selected)
    base = {
        "version": __version__, "data": fingerprints, "schema": schema.to_dict(), "options": options,
        "test_fraction": test_fraction if test is None else None, "noise_levels": noise_levels,
        "permutations": permutations, "noise_rows": noise_rows,
    }  # fmt: skip

    args = (template, options, train, test, valid, output, test_fraction, noise_levels, permutations, noise_rows)
    run = _StreamRun(*args, schema=schema) if streamed else _Run(*args)
    if streamed:
        say(f"{train} is streamed: each entry is a streamed fit, scored on every test row; robustness on a sample "
            f"of {noise_rows} test rows")  # fmt: skip
    run.say = say
    results: list[dict] = []
    ran = skipped = 0
    total = len(entries) * len(seed_list)
    for seed in seed_list:
        done: dict[str, dict] = {}
        for entry in entries:
            members = [e for e in entries if e.kind == "unimodal"] if entry.kind == "ensemble" else []
            spec = {"entry": entry.name, "kind": entry.kind, "inputs": entry.inputs, "fusion": entry.fusion}
            if members:  # an ensemble is stale once any of its members was trained again
                spec["members"] = {m.inputs[0]: done[m.name]["run_id"] for m in members}
            settings = _settings_hash(base | spec | {"seed": seed})
            result = _done(run.folder(entry, seed), settings)
            if result is not None:
                result = result | {"resumed": True}
                skipped += 1
                say(f"[{len(results) + 1}/{total}] {entry.name} seed {seed}: finished before, skipped")
            else:
                result = spec | {"seed": seed, "settings": settings, "run_id": uuid.uuid4().hex}
                result |= run.run_entry(entry, seed, members, done)
                write_json(run.folder(entry, seed) / RESULT, result)  # last: it marks the entry as finished
                ran += 1
                m = result["robustness"]["metric"]
                score, secs = result["metrics"][m], result["seconds"]
                say(f"[{len(results) + 1}/{total}] {entry.name} seed {seed}: {m} {score:.4f} ({secs:.0f} s)")
            results.append(result)
            done[entry.name] = result

    wall = time.perf_counter() - wall_start
    # The whole compare's time, counting the entries an earlier (interrupted or parallel) run finished.
    wall_total = wall + sum(r["seconds"] for r in results if r.get("resumed"))
    metric, higher = results[0]["robustness"]["metric"], results[0]["robustness"]["higher_is_better"]
    path = output / f"{LEADERBOARD}.json"
    previous = read_json(path) if path.exists() else {}
    encoder_s = run.encoder_seconds or previous.get("encoder_pass_seconds")  # all resumed: keep the earlier one
    board = {
        "kind": "polymodal-compare",
        "polymodal_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "label": label,
        "problem_type": schema.problem_type.value,
        "inputs": {n: m.value for n, m in schema.inputs.items()},
        "task": run.task or previous.get("task"),
        "metric": metric,
        "higher_is_better": higher,
        "seeds": len(seed_list),
        "noise_levels": noise_levels,
        "noise_rows": noise_rows,
        "entries_run": ran,
        "entries_skipped": skipped,
        "wall_seconds": round(wall, 2),
        "wall_seconds_total": round(wall_total, 2),
        "encoder_pass_seconds": None if encoder_s is None else round(encoder_s, 3),
        "wall_over_encoder_pass": None if not encoder_s else round(wall_total / encoder_s, 2),
        "feature_cache": run.feature_cache() or previous.get("feature_cache", {}),
        "streaming": streamed,
        "data": fingerprints,
        "options": options,
        "leaderboard": aggregate(results, entries, metric, higher),
        # A model that ignores its inputs, on the same test rows: what every entry must beat to have learned.
        "majority_class": run.majority or previous.get("majority_class"),
        "results": [{k: v for k, v in r.items() if k not in ("history", "resumed")} for r in results],
    }
    board["verdict"] = verdict(board)
    write_json(path, board)
    _write_csv(output / f"{LEADERBOARD}.csv", board["leaderboard"])
    if report:
        from polymodal.evaluation.report import compare_report, write_html

        write_html(output / REPORT, compare_report(output))
    return board
