"""The one Lightning `Trainer` of polymodal's training loops (`training.fit.train`, `retrieval.train.train_align`)
and the callbacks each run starts with: best weights in memory instead of Lightning's pickled checkpoints, the
history, early stopping, the time limit (`train.time_limit`, Lightning's `max_time`) and why the run stopped."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl

from polymodal.config import ConfigError
from polymodal.training.callbacks import BestWeights, History, StopWatch, progress_callback
from polymodal.training.config import TrainConfig


def quiet_lightning() -> None:
    """Lightning's start-up banners and tips are noise in a CLI; real warnings still show."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*treespec.*",
        ".*does not have many workers.*",
        ".*litlogger.*",
        ".*has `__len__` defined.*",
        ".*all_gather is deprecated.*",
        # frozen readouts (polymodal/model/readout.py) stay in eval mode on purpose
        ".*module\\(s\\) in eval mode at the start of training.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def distributed_settings(cfg: TrainConfig) -> dict[str, Any]:
    """Trainer settings for one process or many. Under torchrun (or SLURM), devices and nodes left at their
    defaults are read from the launcher's environment, and the strategy becomes DDP."""
    devices, nodes, strategy = cfg.devices, cfg.num_nodes, cfg.strategy
    if "LOCAL_WORLD_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun
        local, world = int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["WORLD_SIZE"])
        devices = local if devices in (1, "auto") else devices
        nodes = world // local if nodes == 1 else nodes
        strategy = "ddp" if strategy == "auto" and world > 1 else strategy
    if isinstance(strategy, str) and strategy.startswith("ddp"):
        from lightning.pytorch.strategies import DDPStrategy

        # Buffers (BatchNorm statistics) are not broadcast at each forward: that is a collective call, and
        # validation runs a different number of batches on each process.
        start = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}.get(strategy)
        if start is None:
            raise ConfigError(f"unknown DDP strategy {strategy!r} (train.strategy); use ddp, ddp_spawn or ddp_fork")
        strategy = DDPStrategy(start_method=start, broadcast_buffers=False)
    return {"devices": devices, "num_nodes": nodes, "strategy": strategy}


def make_optimizer(module: pl.LightningModule, cfg: TrainConfig) -> Any:
    """AdamW over the module's trainable parameters, fine-tuned pretrained backbones at `cfg.encoder_lr`."""
    import torch

    from polymodal.encoders import FineTuned

    # Pretrained backbones learn slower than the freshly initialised rest, so they keep what they know.
    backbone = {id(p) for m in module.modules() if isinstance(m, FineTuned) for p in m.backbone.parameters()}
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in backbone], "lr": cfg.lr}]
    tuned = [p for p in params if id(p) in backbone]
    if tuned:
        groups.append({"params": tuned, "lr": cfg.encoder_lr or cfg.lr / 10})
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def prefer_bf16(cfg: TrainConfig) -> None:
    """Fine-tuning on a GPU that supports it trains in bf16 mixed precision unless asked otherwise."""
    import torch

    if cfg.precision == "32-true" and cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            cfg.precision = "bf16-mixed"


@dataclass
class Watchers:
    """The callbacks every run starts with, first in its list."""

    best: BestWeights
    history: History
    stopping: pl.callbacks.EarlyStopping
    stop: StopWatch

    def callbacks(self) -> list[pl.Callback]:
        return [self.best, self.history, self.stopping, self.stop]

    def results(self, trainer: pl.Trainer, cfg: TrainConfig, **extra: Any) -> dict[str, Any]:
        """What a training function returns: history, best epoch, epochs run, `extra`, and how the run stopped
        (`StopWatch.summary`: stopped_by, stopped_epoch, time_limit, time_limited)."""
        out = {"history": self.history.rows, "best_epoch": self.best.best_epoch, "epochs": trainer.current_epoch}
        return out | extra | self.stop.summary(trainer, cfg.time_limit)


def begin(cfg: TrainConfig, monitor: str, mode: str) -> Watchers:
    """Quiet Lightning, seed every generator, and make the callbacks that watch `monitor` (`mode`: max | min)."""
    quiet_lightning()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    stopping = pl.callbacks.EarlyStopping(monitor, mode=mode, patience=cfg.patience)
    return Watchers(BestWeights(monitor, mode), History(), stopping, StopWatch())


def make_trainer(cfg: TrainConfig, callbacks: list[pl.Callback], *, distributed: bool = True) -> pl.Trainer:
    """The Trainer of a run: no logger and no Lightning checkpoints, gradients clipped at 1, a progress callback
    with `cfg.progress`, stopped at `cfg.time_limit` seconds when it has one. `distributed`: devices, nodes and
    strategy from `distributed_settings` and rows that split themselves between processes (no Lightning sampler);
    False: `cfg.devices` and `cfg.strategy` handed to Lightning as they are."""
    callbacks = list(callbacks)
    if cfg.progress:
        callbacks.append(progress_callback())
    if distributed:
        # the rows know how to split themselves (polymodal/training/data.py)
        placement = distributed_settings(cfg) | {"use_distributed_sampler": False}
    else:
        placement = {"devices": cfg.devices, "strategy": cfg.strategy}
    return pl.Trainer(
        max_epochs=cfg.max_epochs,
        # Checked by Lightning's Timer after every training batch: a cut epoch is still validated, so the best
        # weights are known; None adds no Timer at all.
        max_time=None if cfg.time_limit is None else timedelta(seconds=cfg.time_limit),
        accelerator=cfg.accelerator,
        precision=cfg.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=cfg.progress and isinstance(callbacks[-1], pl.callbacks.ProgressBar),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        callbacks=callbacks,
        **placement,
    )
