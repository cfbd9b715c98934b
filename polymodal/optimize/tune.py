"""`polymodal tune`: an Optuna search over polymodal's config, with pruning, resumable studies and many workers.

One trial = one config (the base config with the trial's values set at their dotted paths) trained with
`MultimodalPredictor.fit_features` on data shared by every trial of the worker:

- **Shared data.** The table is read once. Decoding (images, audio, frozen pretrained encoders) happens once
  per decoding setting (the schema and the preprocess section: a searched `preprocess.image_size` decodes once
  per size), and the preprocessing is fitted once per (decoding setting, split seed). Trials that only change
  the model or the optimizer reuse the same arrays.
- **Pruning.** Optuna-integration's `PyTorchLightningPruningCallback` reports the monitored validation metric
  (`val_accuracy`, `val_rmse` for regression) after every epoch; `MonitoredPruning` turns a missing metric into
  an error instead of the warning that lets pruning silently do nothing.
- **Budget.** `trials` is a total over every run and worker of the study. A trial counts once it has a verdict:
  COMPLETE, PRUNED, or FAIL with an `error` user attribute (it crashed: those settings fail). A trial whose
  worker died has no verdict: the heartbeat marks it FAIL (no `error`) and `RetryFailedTrialCallback` queues it
  again, so it does not count. The budget is checked before each trial; a worker waits while the last trials
  run elsewhere (one of them may die and come back as a retry), so the study ends with exactly `trials`.
- **Storage.** An RDB storage with a heartbeat: by default `sqlite:///OUTPUT/study.db`; a PostgreSQL URL lets
  workers on several machines share one study. Re-running the same command resumes the study.
- **Files.** `trials/NNNN` (the best `keep` completed trials' model folders; the others are deleted), `best`
  (the best trial's model folder), `trials.csv`, `report.html`, `tune.json`.

Like `compare`, this module orchestrates `MultimodalPredictor`s, so it imports the facade inside functions.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import shutil
import socket
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.version import __version__
from polymodal.config import build_config
from polymodal.data.io import read_table
from polymodal.data.schema import Modality, Schema, infer_schema
from polymodal.data.validate import check_columns
from polymodal.errors import UserError
from polymodal.model.artifact import atomic_folder, read_json, write_json
from polymodal.optimize.space import Config, Space, build_space, default_space, read_space
from polymodal.preprocess import Features, PreprocessConfig, Preprocessor

log = logging.getLogger("polymodal")

TRIALS_DIR, BEST, TRIALS_CSV, REPORT, SUMMARY = "trials", "best", "trials.csv", "report.html", "tune.json"
DB = "study.db"
TRIAL_INFO = "trial.json"  # written into each trial's model folder (a model folder may hold extra files)
PRUNERS = ("median", "hyperband", "none")


class TuneError(UserError):
    """A problem with the study itself (its storage, or a resume with different settings)."""


# ---- small parsers -----------------------------------------------------------------------------------------
def parse_duration(text: str | float | int | None) -> float | None:
    """'2h', '90m', '1h30m', '45s' or plain seconds -> seconds."""
    if text is None or isinstance(text, int | float):
        return None if text is None else float(text)
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", s)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms])", "", s).strip():
        raise UserError(f"cannot read the duration {text!r}: write e.g. 2h, 90m, 1h30m, 45s or seconds")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def storage_url(url: str | None, output: Path) -> str:
    """The default storage is a SQLite file in the output folder; postgresql:// URLs go through psycopg 3."""
    if url is None:
        return f"sqlite:///{(output / DB).resolve()}"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def masked(url: str) -> str:
    """A storage URL without its password, for messages and files."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(url: str, heartbeat: int, max_retry: int) -> Any:
    """An RDB storage with a heartbeat: a trial whose worker stops beating for 2 x `heartbeat` seconds is marked
    FAIL and queued again (at most `max_retry` times). Unreachable storage: a `TuneError` before any training."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": 10}
    elif url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 60}  # several local workers wait for the file lock
    try:
        # Workers that start together on a new database race to create its tables; the loser sees "already
        # exists" and only has to open the storage again.
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return RDBStorage(
                        url,
                        engine_kwargs=engine,
                        heartbeat_interval=heartbeat,
                        grace_period=2 * heartbeat,
                        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
                    )
            except Exception as e:  # noqa: BLE001 - sqlalchemy's OperationalError; anything else is re-raised below
                if "already exists" not in str(e) or attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")
    except ImportError as e:
        raise TuneError(f"cannot open the study storage {masked(url)}: {e}. Install polymodal[tune].") from e
    except Exception as e:  # sqlalchemy's OperationalError, ArgumentError, ...: the message says what went wrong
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TuneError(
            f"cannot open the study storage {masked(url)}: {reason}. Check the URL, that the database server is "
            "running and reachable, and the user's rights (or leave --storage out for a SQLite file in the output)."
        ) from None


# ---- the config of a trial ---------------------------------------------------------------------------------
def base_config(config: Any, label: str) -> Config:
    """The config every trial starts from: a Config, a dict, a YAML file or None (defaults), with the label."""
    return build_config(config, label=label)


def trial_config(base: Config, values: dict[str, Any]) -> Config:
    cfg = base.copy()
    for path, value in values.items():
        cfg.set(path, value)
    cfg.set("train.progress", False)  # one line per trial instead of progress bars
    return cfg


def make_predictor(cfg: Config) -> Any:
    from polymodal.predictor import MultimodalPredictor

    return MultimodalPredictor(config=cfg)


# ---- data shared by the trials -----------------------------------------------------------------------------
@dataclass
class Prepared:
    """What `fit_features` needs: one split, preprocessed, for one (decoding setting, seed)."""

    schema: Schema
    preprocessor: Preprocessor
    task: Any
    train_x: Features
    train_y: np.ndarray
    valid_x: Features
    vdf: pd.DataFrame
    train_rows: int


class SharedData:
    """The training (and validation) table read once; decoded once per decoding setting; preprocessed once per
    (decoding setting, split seed). `decodes` and `preparations` count the work actually done."""

    def __init__(self, train: Any, valid: Any | None, max_entries: int = 3):
        self.source, self.valid_source = train, valid
        self.table = read_table(train)
        self.vtable = read_table(valid) if valid is not None else None
        self.max_entries = max_entries
        self._decoded: OrderedDict[str, tuple] = OrderedDict()
        self._prepared: OrderedDict[str, Prepared] = OrderedDict()
        self.decodes = self.preparations = 0

    def schema(self, p: Any) -> Schema:
        d = p.config_.data
        modalities = {c: Modality(m) for c, m in d.modalities.items()}
        schema = infer_schema(self.table[0], d.label, modalities, d.ignore, d.problem_type)
        check_columns(self.table[0], schema, training=True)
        return schema

    def _decode_key(self, p: Any) -> tuple[str, Schema, PreprocessConfig]:
        schema = self.schema(p)
        config = PreprocessConfig(**(p.config_.preprocess.to_dict() | {"pretrained": p._pretrained_config(schema)}))
        key = json.dumps([schema.to_dict(), config.to_dict(), p.config_.data.on_bad_rows], sort_keys=True, default=str)
        return key, schema, config

    @staticmethod
    def _remember(cache: OrderedDict, key: str, value: Any, size: int) -> None:
        cache[key] = value
        while len(cache) > size:
            cache.popitem(last=False)

    def prepare(self, p: Any) -> Prepared:
        from polymodal.model.pipeline import FeaturePipeline
        from polymodal.tasks import Task

        dkey, schema, config = self._decode_key(p)
        if dkey not in self._decoded:
            df, base_dir = self.table
            base = Preprocessor(schema, config).fit_pretrained(df, base_dir)
            pipeline = FeaturePipeline(schema, base, p.cache_dir, progress=False)
            rows = p._load_rows(self.source, pipeline, training=True, table=self.table)
            vrows = None
            if self.vtable is not None:
                vrows = p._load_rows(self.valid_source, pipeline, training=False, table=self.vtable)
            self._remember(self._decoded, dkey, (schema, base, rows, vrows), self.max_entries)
            self.decodes += 1
        self._decoded.move_to_end(dkey)
        schema, base, (df, media, frozen, _), vrows = self._decoded[dkey]
        pkey = json.dumps([dkey, p.train_config.seed, p.config_.data.valid_fraction])
        if pkey not in self._prepared:
            if vrows is None:
                (df, media, frozen), (vdf, vmedia, vfrozen) = p._split(df, media, frozen, schema)
            else:
                vdf, vmedia, vfrozen, _ = vrows
            if schema.problem_type.is_classification and df[schema.label].nunique() < 2:
                raise UserError(f"the label {schema.label!r} has a single class in the training rows")
            pre = Preprocessor(schema, base.config)
            pre.state = copy.deepcopy(base.state)  # the pretrained inputs' settings; fit adds the rest
            pre.fit(df, media)
            task = Task.fit(schema.problem_type, df[schema.label])
            prepared = Prepared(schema, pre, task, pre.transform(df, media, frozen), task.encode_targets(
                df[schema.label]), pre.transform(vdf, vmedia, vfrozen), vdf, len(df))  # fmt: skip
            self._remember(self._prepared, pkey, prepared, self.max_entries)
            self.preparations += 1
        self._prepared.move_to_end(pkey)
        return self._prepared[pkey]


# ---- pruning -----------------------------------------------------------------------------------------------
def pruning_callback(trial: Any, monitor: str) -> Any:
    """Optuna-integration's Lightning pruning callback, made strict: a metric it cannot find is an error (the
    stock callback only warns, and pruning then silently never happens)."""
    from optuna_integration import PyTorchLightningPruningCallback

    class MonitoredPruning(PyTorchLightningPruningCallback):
        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                return
            if self.monitor not in trainer.callback_metrics:
                raise RuntimeError(
                    f"pruning monitors {self.monitor!r}, which training does not log "
                    f"(logged: {sorted(trainer.callback_metrics)})"
                )
            self.reported += 1  # before the parent's report, which raises TrialPruned when the trial is cut
            if trainer.current_epoch >= trainer.max_epochs - 1:  # the last epoch: cutting it saves nothing
                self._trial.report(float(trainer.callback_metrics[self.monitor]), step=trainer.current_epoch)
                return
            super().on_validation_end(trainer, pl_module)

    callback = MonitoredPruning(trial, monitor)
    callback.reported = 0
    return callback


def make_pruner(name: str, max_epochs: int, startup: int, warmup: int) -> Any:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(2, max_epochs), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"unknown pruner {name!r}; choose one of {PRUNERS}")


# ---- the study's bookkeeping -------------------------------------------------------------------------------
def has_verdict(t: Any) -> bool:
    """Counts against the budget: finished with a result, pruned, or crashed (recorded error)."""
    from optuna.trial import TrialState

    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and "error" in t.user_attrs
    )


def budget_counts(study: Any) -> dict[str, int]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    return {
        "verdicts": sum(has_verdict(t) for t in trials),
        "running": sum(t.state == TrialState.RUNNING for t in trials),
        "waiting": sum(t.state == TrialState.WAITING for t in trials),
        "all": len(trials),
    }


def trial_folder(output: Path, number: int) -> Path:
    return output / TRIALS_DIR / f"{number:04d}"


def _ranked(study: Any) -> list[Any]:
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    maximize = study.direction == StudyDirection.MAXIMIZE
    return sorted(done, key=lambda t: (-t.value if maximize else t.value, t.number))


def tidy_folders(study: Any, output: Path, keep: int) -> list[int]:
    """Delete the folders of finished trials outside the best `keep`; never those of trials still running."""
    kept = {t.number for t in _ranked(study)[:keep]}
    finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    folder = output / TRIALS_DIR
    for d in folder.iterdir() if folder.exists() else []:
        if d.name.isdigit() and int(d.name) in finished and int(d.name) not in kept:
            shutil.rmtree(d, ignore_errors=True)
    return sorted(kept)


def update_best(study: Any, output: Path) -> int | None:
    """Copy the best trial's model folder to OUTPUT/best (atomically), when it is on this machine."""
    ranked = _ranked(study)
    if not ranked:
        return None
    best = ranked[0]
    src, dst = trial_folder(output, best.number), output / BEST
    current = read_json(dst / TRIAL_INFO).get("number") if (dst / TRIAL_INFO).exists() else None
    if current != best.number and src.exists():
        with atomic_folder(dst) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
    return best.number


def trial_rows(study: Any, metric: str) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append(
            {"number": t.number, "state": t.state.name, metric: t.value, "epochs": a.get("epochs"),
             "duration_s": None if duration is None else round(duration, 2), **t.params,
             "error": a.get("error"), "worker": a.get("worker"), "retry_of": t.system_attrs.get("failed_trial")}
        )  # fmt: skip
    return rows


# ---- the search --------------------------------------------------------------------------------------------
def _check_study(study: Any, settings: dict[str, Any], storage: str) -> None:
    """A resumed study must have been started with the same table, space and config."""
    saved = study.user_attrs.get("polymodal")
    if saved is None:
        study.set_user_attr("polymodal", settings)
        return
    differ = [k for k in settings if k != "version" and saved.get(k) != settings[k]]
    if differ:
        raise TuneError(
            f"the study {study.study_name!r} in {masked(storage)} was started with a different {', '.join(differ)}; "
            "re-run with the same settings to resume it, or start a new one with --study NAME or another output folder"
        )


def tune(
    train: Any,
    label: str,
    output: str | os.PathLike[str],
    *,
    trials: int = 20,
    timeout: str | float | None = None,
    space: str | os.PathLike[str] | dict | None = None,
    storage: str | None = None,
    study_name: str = "polymodal-tune",
    valid: Any | None = None,
    keep: int = 3,
    config: Any = None,
    pruner: str = "median",
    pruner_startup: int = 3,
    pruner_warmup: int = 1,
    seed: int = 0,
    heartbeat: int = 60,
    max_retry: int = 2,
    report: bool = True,
    log_fn: Callable[[str], None] | None = None,
    _after_trial: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Search the config space; returns what tune.json holds. Everything is checked before any training."""
    import optuna

    say = log_fn or log.info
    if trials < 1 or keep < 1:
        raise UserError("trials and keep must be at least 1")
    if pruner not in PRUNERS:
        raise UserError(f"unknown pruner {pruner!r}; choose one of {PRUNERS}")
    seconds = parse_duration(timeout)
    output = Path(output)

    # 1. the settings: config, space (paths, ranges, types), then the table and its label
    base = base_config(config, label)
    user_space = read_space(space)
    build_space(user_space, base)  # bad paths and ranges fail here, before the table is even read
    if base.privacy.anonymize:  # before the table is read; the copies stay in the output folder
        from polymodal.privacy import anonymize_tables

        tables = anonymize_tables(base, base.privacy.output_dir or output / "anonymized", say, train=train, valid=valid)
        train, valid = tables["train"], tables["valid"]
    data = SharedData(train, valid)
    probe = make_predictor(trial_config(base, {}))
    schema = data.schema(probe)
    images = any(m is Modality.IMAGE for m in schema.inputs.values())
    pretrained = bool(probe._pretrained_config(schema))
    search: Space = build_space(default_space(images, pretrained) | user_space, base)
    metric, direction = ("accuracy", "maximize") if schema.problem_type.is_classification else ("rmse", "minimize")
    from polymodal.data.stream import fingerprint

    settings = {"label": label, "metric": metric, "space": search.to_dict(), "config": base.to_dict(),
                "data": fingerprint(data.table[0]), "version": __version__}  # fmt: skip

    # 2. the study: storage reachable, same settings when resuming
    url = storage_url(storage, output)
    if storage is None:
        output.mkdir(parents=True, exist_ok=True)  # the default storage lives there
    store = open_storage(url, heartbeat, max_retry)
    output.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    max_epochs = max(int(search.fixed.get("train.max_epochs", base.get("train.max_epochs"))), 1)
    study = optuna.create_study(
        study_name=study_name, storage=store, direction=direction, load_if_exists=True,
        pruner=make_pruner(pruner, max_epochs, pruner_startup, pruner_warmup),
    )  # fmt: skip
    _check_study(study, settings, url)
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        start = time.perf_counter()
        trial.set_user_attr("worker", worker)
        try:
            values = search.suggest(trial)
            p = make_predictor(trial_config(base, values))
            d = data.prepare(p)
            pruning = pruning_callback(trial, f"val_{metric}")
            try:
                p.fit_features(d.schema, d.preprocessor, d.task, d.train_x, d.train_y, d.valid_x, d.vdf,
                               callbacks=[pruning])  # fmt: skip
            finally:
                trial.set_user_attr("epochs", pruning.reported)
            value = float(p.metrics_["valid"][metric])
            if not math.isfinite(value):
                raise UserError(f"validation {metric} is {value}")
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
            ranked = _ranked(study)
            worse = direction == "maximize" and len(ranked) >= keep and value < ranked[keep - 1].value
            worse |= direction == "minimize" and len(ranked) >= keep and value > ranked[keep - 1].value
            if not worse:  # only a possible top-`keep` trial writes its model folder
                p.metrics_["train_rows"] = d.train_rows
                folder = p.save(trial_folder(output, trial.number))
                write_json(folder / TRIAL_INFO, {"number": trial.number, "study": study_name, metric: value,
                                                  "params": values})  # fmt: skip
            return value
        except optuna.TrialPruned:
            raise
        except Exception as e:  # recorded on the trial; the study goes on (optimize(catch=...))
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
            raise
        finally:
            _free_memory()

    deadline = None if seconds is None else time.monotonic() + seconds
    ran = 0
    while True:
        counts = budget_counts(study)
        if counts["verdicts"] >= trials:
            break
        if deadline is not None and time.monotonic() >= deadline:
            say(f"timeout after {seconds:.0f} s: {counts['verdicts']}/{trials} trials done; re-run to continue")
            break
        if counts["waiting"] == 0 and counts["verdicts"] + counts["running"] >= trials:
            # The last trials run in other workers. Wait: if one dies, the heartbeat queues it again here.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            time.sleep(min(5.0, heartbeat / 2))
            continue
        # Seeded TPE, seeded again per trial from the trial count: one worker on a fresh study is reproducible,
        # and a resumed or second worker does not replay the first one's random start.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.sampler = optuna.samplers.TPESampler(
                seed=seed + counts["all"], n_startup_trials=max(3, min(10, trials // 4)), constant_liar=True
            )
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
        ran += 1
        last = study.get_trials(deepcopy=False)[-1]
        say(_trial_line(study, metric, trials))
        tidy_folders(study, output, keep)
        update_best(study, output)
        if _after_trial is not None:
            _after_trial(last)

    summary = finish(study, output, metric, keep, trials, url, report)
    summary |= {"ran_here": ran, "decodes": data.decodes, "preparations": data.preparations}
    write_json(output / SUMMARY, summary)
    return summary


def _trial_line(study: Any, metric: str, trials: int) -> str:
    """One line about this worker's latest trial."""
    mine = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    t = max(mine, key=lambda t: t.datetime_complete or t.datetime_start)
    done = budget_counts(study)["verdicts"]
    what = {"COMPLETE": f"{metric} {t.value:.4f}" if t.value is not None else "complete", "PRUNED": "pruned"}
    verdict = what.get(t.state.name, f"failed: {t.user_attrs.get('error', 'no error recorded')}")
    params = " ".join(f"{k}={_short(v)}" for k, v in t.params.items())
    return f"[{done}/{trials}] trial {t.number}: {verdict} ({t.user_attrs.get('epochs')} epochs) {params}"


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _free_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def finish(study: Any, output: Path, metric: str, keep: int, trials: int, url: str, report: bool) -> dict[str, Any]:
    """trials.csv, report.html and the summary, from whatever is in the storage now (every worker's trials)."""
    from polymodal.evaluation.compare import _write_csv

    kept = tidy_folders(study, output, keep)
    best_number = update_best(study, output)
    rows = trial_rows(study, metric)
    _write_csv(output / TRIALS_CSV, rows)
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    best = next((t for t in study.get_trials(deepcopy=False) if t.number == best_number), None)
    summary = {
        "kind": "polymodal-tune",
        "polymodal_version": __version__,
        "study": study.study_name,
        "storage": masked(url),
        "metric": metric,
        "direction": study.direction.name.lower(),
        "budget": trials,
        "verdicts": budget_counts(study)["verdicts"],
        "states": states,
        "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
        "best_folder": str(output / BEST) if (output / BEST).exists() else None,
        "kept_trials": {n: str(trial_folder(output, n)) for n in kept if trial_folder(output, n).exists()},
    }
    if best is not None and not (output / BEST).exists():
        summary["best_note"] = f"trial {best.number} ran on worker {best.user_attrs.get('worker')}: its folder is there"
    if report:
        from polymodal.evaluation.report import write_html
        from polymodal.optimize.report import tune_report

        write_html(output / REPORT, tune_report(study, summary, rows))
    return summary
