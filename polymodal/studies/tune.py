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

from polymodal.config import build_config
from polymodal.data.io import read_table
from polymodal.data.schema import Modality, Schema, infer_schema
from polymodal.data.validate import check_columns
from polymodal.errors import UserError
from polymodal.model.artifact import write_json
from polymodal.preprocess import Features, PreprocessConfig, Preprocessor
from polymodal.studies.budget import Budget, cut_short
from polymodal.studies.space import Config, Space, build_space, default_space, read_space
from polymodal.studies.trials import (
    BEST,
    PRUNERS,
    REPORT,
    SUMMARY,
    TRIAL_INFO,
    TRIALS_CSV,
    TuneError,
    budget_counts,
    make_pruner,
    masked,
    open_storage,
    parse_duration,
    pruning_callback,
    ranked_trials,
    storage_url,
    tidy_folders,
    trial_folder,
    trial_rows,
    update_best,
)
from polymodal.training.table import pretrained_config, readout_states, split_rows
from polymodal.version import __version__

log = logging.getLogger("polymodal")


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
        schema = infer_schema(self.table[0], d.label, modalities, d.ignore, d.problem_type, d.empty_label)
        check_columns(self.table[0], schema, training=True)
        return schema

    def _decode_key(self, p: Any) -> tuple[str, Schema, PreprocessConfig]:
        schema = self.schema(p)
        config = PreprocessConfig(
            **(
                p.config_.preprocess.to_dict()
                | {"pretrained": pretrained_config(p.config_, schema), "fixed": readout_states(p.config_, schema)}
            )  # fmt: skip
        )
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
        pkey = json.dumps([dkey, p.train_config.seed, p.config_.data.valid_fraction, p.config_.data.split_by])
        if pkey not in self._prepared:
            if vrows is None:
                (df, media, frozen), (vdf, vmedia, vfrozen) = split_rows(p.config_, df, media, frozen, schema)
            else:
                vdf, vmedia, vfrozen, _ = vrows
            if schema.problem_type.is_classification and df[schema.label].nunique() < 2:
                raise UserError(f"the label {schema.label!r} has a single class in the training rows")
            pre = Preprocessor(schema, base.config)
            pre.state = copy.deepcopy(base.state)  # the pretrained inputs' settings; fit adds the rest
            pre.fit(df, media)
            task = Task.fit(schema.problem_type, df[schema.label], p.config_.decoder,
                            any(m.value == "audio" for m in schema.inputs.values()), schema.empty_label)  # fmt: skip
            prepared = Prepared(schema, pre, task, pre.transform(df, media, frozen), task.encode_targets(
                df[schema.label]), pre.transform(vdf, vmedia, vfrozen), vdf, len(df))  # fmt: skip
            self._remember(self._prepared, pkey, prepared, self.max_entries)
            self.preparations += 1
        self._prepared.move_to_end(pkey)
        return self._prepared[pkey]


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
    time_limit: str | float | None = None,
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
    """Search the config space; returns what tune.json holds. Everything is checked before any training.
    `timeout`: stop starting trials after this long. `time_limit`: the study's whole budget, shared across the
    trials still to run (each trial's `train.time_limit` is the time left over the trials left, so it stops
    within its share with its best epoch so far); it also ends the search, like `timeout`."""
    import optuna

    say = log_fn or log.info
    if trials < 1 or keep < 1:
        raise UserError("trials and keep must be at least 1")
    if pruner not in PRUNERS:
        raise UserError(f"unknown pruner {pruner!r}; choose one of {PRUNERS}")
    seconds = parse_duration(timeout)
    limit = parse_duration(time_limit)
    if limit is not None and not limit > 0:
        raise UserError(f"the time limit must be a positive number of seconds, not {time_limit}")
    if limit is not None:
        seconds = limit if seconds is None else min(seconds, limit)
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
    pretrained = bool(pretrained_config(probe.config_, schema))
    search: Space = build_space(default_space(images, pretrained) | user_space, base)
    metric, direction = ("accuracy", "maximize") if schema.problem_type.is_classification else ("rmse", "minimize")
    if schema.problem_type.is_text:  # the generation metric early stopping watches (decoder.metric)
        audio = any(m is Modality.AUDIO for m in schema.inputs.values())
        metric = base.decoder.metric or ("wer" if audio else "cider")
        direction = "minimize" if metric in ("wer", "cer") else "maximize"
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
            if budget is not None:  # this trial's share of the study's time limit
                budget.left = max(trials - budget_counts(study)["verdicts"], 1)
                p.config_.train.time_limit = budget.share(base.train.time_limit)
            d = data.prepare(p)
            pruning = pruning_callback(trial, f"val_{metric}")
            try:
                p.fit_features(d.schema, d.preprocessor, d.task, d.train_x, d.train_y, d.valid_x, d.vdf,
                               callbacks=[pruning])  # fmt: skip
            finally:
                trial.set_user_attr("epochs", pruning.reported)
            for key, value in cut_short(p.metrics_).items():
                trial.set_user_attr(key, value)
            value = float(p.metrics_["valid"][metric])
            if not math.isfinite(value):
                raise UserError(f"validation {metric} is {value}")
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
            ranked = ranked_trials(study)
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

    budget = None if limit is None else Budget(limit, trials)
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
    from polymodal.studies.leaderboard import write_csv

    kept = tidy_folders(study, output, keep)
    best_number = update_best(study, output)
    rows = trial_rows(study, metric)
    write_csv(output / TRIALS_CSV, rows)
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
        from polymodal.evaluation.html import write_html
        from polymodal.studies.tune_report import tune_report

        write_html(output / REPORT, tune_report(study, summary, rows))
    return summary


def tune_predictor(template: Any, train: Any, output: str | os.PathLike[str], **options: Any) -> Any:
    """Search over `template`'s config (a MultimodalPredictor) and return the best trial's model, loaded, with
    the summary as `tune_` (what the deprecated `MultimodalPredictor.tune` returns)."""
    from polymodal.predictor import MultimodalPredictor

    summary = tune(train, template.label, output, config=template.config_, **options)
    if summary["best_folder"] is None:
        raise RuntimeError(f"no trial of the study finished here; see {Path(output) / 'trials.csv'}")
    best = MultimodalPredictor.load(summary["best_folder"])
    best.tune_ = summary
    return best
