"""The Lightning callbacks every polymodal training run has (`training.fit.train`, `retrieval.train.train_align`):
best weights kept in memory, the per-epoch history, one log line per epoch, and why the run stopped."""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning.pytorch as pl
import torch


class BestWeights(pl.Callback):
    """Keep a copy of the best weights by the monitored metric (ties broken by validation loss); restore at the end."""

    def __init__(self, monitor: str, mode: str, restore: bool = True):
        self.monitor, self.sign, self.restore = monitor, (1.0 if mode == "max" else -1.0), restore
        self.best: tuple[float, float] | None = None
        self.best_epoch = -1
        self.state: dict[str, torch.Tensor] | None = None

    # Not on_validation_epoch_end: callbacks run before the module's hook there, so they would see stale metrics.
    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        m = trainer.callback_metrics
        if self.monitor not in m or trainer.sanity_checking:
            return
        score = (self.sign * float(m[self.monitor]), -float(m["val_loss"]))
        if self.best is None or score > self.best:
            self.best, self.best_epoch = score, trainer.current_epoch
            if self.restore:  # a refit keeps its last epoch: no copy to make
                self.state = {k: v.detach().cpu().clone() for k, v in module.net.state_dict().items()}

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.state is not None and self.restore:
            module.net.load_state_dict(self.state)

    def state_dict(self) -> dict[str, Any]:
        return {"best": list(self.best) if self.best else None, "best_epoch": self.best_epoch, "state": self.state}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.best = tuple(d["best"]) if d["best"] else None
        self.best_epoch, self.state = d["best_epoch"], d["state"]


class History(pl.Callback):
    """Per-epoch metrics, kept for metrics.json and the training curves of reports."""

    def __init__(self):
        self.rows: list[dict[str, float]] = []
        self.start = time.perf_counter()
        self.loop_start: float | None = None

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # Every process has joined by now: what follows is training, not the start-up of the others.
        self.loop_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        row = {"epoch": trainer.current_epoch, "seconds": round(time.perf_counter() - self.start, 3)}
        row |= {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train_", "val_"))}
        self.rows.append(row)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "elapsed": time.perf_counter() - self.start}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.rows, self.start = list(d["rows"]), time.perf_counter() - d["elapsed"]


class StopWatch(pl.Callback):
    """Which of the time limit and early stopping ended the run. Both only set `trainer.should_stop`; Lightning's
    Timer (`Trainer(max_time=...)`) sets it after a training batch, early stopping at the epoch's end, in the hooks
    of "monitoring" callbacks, which Lightning runs after every other callback's. So a flag already set when this
    callback's epoch-end hook runs was not set by early stopping."""

    def __init__(self):
        self.set_before_monitors = False  # at the end of the last epoch, before early stopping ran
        self.full_epoch = True  # the last epoch ran all its batches (the time limit may cut one short)
        self.set_at_end = False

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.set_before_monitors = trainer.should_stop
        self.full_epoch = bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.set_at_end = trainer.should_stop

    def summary(self, trainer: pl.Trainer, time_limit: float | None) -> dict[str, Any]:
        """`stopped_by`: time_limit | early_stopping | max_epochs | callback (another callback set the flag);
        `stopped_epoch`: the (0-based) epoch in which it stopped before max_epochs, None when it ran them all."""
        timer = timer_of(trainer)
        time_up = timer is not None and time_limit is not None and timer.time_elapsed() >= time_limit
        epochs = trainer.current_epoch  # epochs run, a last one cut short included
        ran_all = epochs >= (trainer.max_epochs or 0) and self.full_epoch
        if self.set_before_monitors and time_up and not ran_all:
            by = "time_limit"
        elif self.set_at_end and not self.set_before_monitors:
            by = "early_stopping"
        elif ran_all:
            by = "max_epochs"
        else:
            by = "callback"
        return {
            "stopped_by": by,
            "stopped_epoch": None if by == "max_epochs" else max(epochs - 1, 0),
            "time_limit": time_limit,
            "time_limited": by == "time_limit",
        }


class EpochLog(pl.Callback):
    """One line per epoch, for logs and CI where a redrawn progress bar turns into noise."""

    def __init__(self):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train_", "val_"))}
        parts = " ".join(f"{k} {v:.4f}" for k, v in sorted(m.items()))
        print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} {parts} ({time.perf_counter() - self.start:.1f} s)"
        )


def timer_of(trainer: pl.Trainer) -> pl.callbacks.Timer | None:
    """The Timer that `Trainer(max_time=...)` added, if any."""
    return next((c for c in trainer.callbacks if isinstance(c, pl.callbacks.Timer)), None)


def progress_callback() -> pl.Callback:
    """A progress bar on a terminal, one line per epoch otherwise."""
    return pl.callbacks.RichProgressBar(leave=True) if sys.stdout.isatty() else EpochLog()
