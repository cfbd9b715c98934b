"""A tuning study's plumbing: its storage (SQLite beside the output, or a shared RDB such as PostgreSQL, with
heartbeats so crashed workers' trials are retried), the pruner and its Lightning callback, and the bookkeeping of
trial folders, the best trial and the trial table."""

from __future__ import annotations

import logging
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from polymodal.errors import UserError
from polymodal.model.artifact import atomic_folder, read_json

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


def ranked_trials(study: Any) -> list[Any]:
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    maximize = study.direction == StudyDirection.MAXIMIZE
    return sorted(done, key=lambda t: (-t.value if maximize else t.value, t.number))


def tidy_folders(study: Any, output: Path, keep: int) -> list[int]:
    """Delete the folders of finished trials outside the best `keep`; never those of trials still running."""
    kept = {t.number for t in ranked_trials(study)[:keep]}
    finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    folder = output / TRIALS_DIR
    for d in folder.iterdir() if folder.exists() else []:
        if d.name.isdigit() and int(d.name) in finished and int(d.name) not in kept:
            shutil.rmtree(d, ignore_errors=True)
    return sorted(kept)


def update_best(study: Any, output: Path) -> int | None:
    """Copy the best trial's model folder to OUTPUT/best (atomically), when it is on this machine."""
    ranked = ranked_trials(study)
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
             "time_limited": a.get("time_limited"), "stopped_epoch": a.get("stopped_epoch"),
             "error": a.get("error"), "worker": a.get("worker"), "retry_of": t.system_attrs.get("failed_trial")}
        )  # fmt: skip
    return rows
