"""The Lightning module, its callbacks, and `train()`.

Best weights are kept in memory and restored at the end instead of Lightning's pickled checkpoints, so
nothing in a run is ever written or read with pickle. With `TrainConfig.checkpoint_dir`, `Checkpointer` writes
the whole training state (weights, optimizer, early stopping, best weights, history, every RNG) as safetensors +
JSON at each epoch boundary, and the same training run again resumes from it and ends with the same weights.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from polymodal.config import ConfigError
from polymodal.data.schema import Modality
from polymodal.errors import UserError
from polymodal.model.network import MultimodalNet
from polymodal.preprocess.augment import augment_images
from polymodal.tasks import Task
from polymodal.training.config import TrainConfig
from polymodal.training.data import MemoryRows, StreamRows

Rows = MemoryRows | StreamRows


class LitMultimodal(pl.LightningModule):
    def __init__(self, net: MultimodalNet, task: Task, image_inputs: list[str], cfg: TrainConfig,
                 data: tuple[Rows, Rows, torch.Generator] | None = None,
                 augmenters: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None):  # fmt: skip
        super().__init__()
        self.net, self.task, self.image_inputs, self.cfg = net, task, image_inputs, cfg
        self.augmenters = augmenters or {}  # input -> a batch transform of its own (e.g. audio's SpectralWarp)
        self.data = data
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    # The loaders are made here, not before `fit`: only now do the process's rank and the world size exist.
    def train_dataloader(self):
        rows, _, generator = self.data
        t = self.trainer
        return rows.loader(self.cfg.batch_size, True, generator, t.global_rank, t.world_size, self.cfg.seed,
                           workers=self.cfg.num_workers)  # fmt: skip

    def val_dataloader(self):
        _, rows, generator = self.data
        t = self.trainer
        return rows.loader(self.cfg.batch_size, False, generator, t.global_rank, t.world_size, self.cfg.seed,
                           workers=self.cfg.num_workers)  # fmt: skip

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(batch["inputs"], batch["present"])

    def training_step(self, batch: dict, _: int) -> torch.Tensor:
        inputs, present = dict(batch["inputs"]), batch["present"]
        if self.cfg.augment:
            for name in self.image_inputs:
                inputs[name] = augment_images(inputs[name])
            for name, augment in self.augmenters.items():
                inputs[name] = augment(inputs[name])
        if self.cfg.modality_dropout > 0 and present.shape[1] > 1:
            present = drop_modalities(present, self.cfg.modality_dropout)
        loss = self.task.loss(self.net(inputs, present), batch["target"])
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=present.shape[0],
                 sync_dist=True)  # fmt: skip
        return loss

    def validation_step(self, batch: dict, _: int) -> None:
        logits = self(batch)
        self._val.append((logits.detach().float(), batch["target"]))

    def on_validation_epoch_end(self) -> None:
        logits = self._gather(torch.cat([v[0] for v in self._val]))
        target = self._gather(torch.cat([v[1] for v in self._val]))
        self._val.clear()
        name, _ = self.task.monitor
        # Every process scores all validation rows, so early stopping and the best epoch agree everywhere.
        self.log("val_loss", self.task.loss(logits, target), prog_bar=True)
        self.log(f"val_{name}", self.task.score(target.cpu().numpy(), self.task.outputs(logits)), prog_bar=True)

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """The rows of every process (each holds a different share, maybe one row fewer)."""
        if self.trainer.world_size == 1:
            return t
        sizes = self.all_gather(torch.tensor([t.shape[0]], device=t.device)).view(-1)
        pad = int(sizes.max()) - t.shape[0]
        if pad:
            t = torch.cat([t, t.new_zeros((pad, *t.shape[1:]))])
        g = self.all_gather(t)
        return torch.cat([g[i, : int(n)] for i, n in enumerate(sizes)]).to(t.device)

    def configure_optimizers(self):
        # Pretrained backbones learn slower than the freshly initialised rest, so they keep what they know.
        from polymodal.encoders import FineTuned

        backbone = {id(p) for m in self.net.modules() if isinstance(m, FineTuned) for p in m.backbone.parameters()}
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if id(p) not in backbone], "lr": self.cfg.lr}]
        tuned = [p for p in params if id(p) in backbone]
        if tuned:
            groups.append({"params": tuned, "lr": self.cfg.encoder_lr or self.cfg.lr / 10})
        return torch.optim.AdamW(groups, weight_decay=self.cfg.weight_decay)

    def on_fit_start(self) -> None:
        # On a GPU, trade compute for memory in fine-tuned backbones (gradient checkpointing).
        from polymodal.encoders import FineTuned

        if self.device.type == "cuda":
            for m in self.net.modules():
                if isinstance(m, FineTuned) and hasattr(m.backbone.model, "gradient_checkpointing_enable"):
                    m.backbone.model.gradient_checkpointing_enable()


def drop_modalities(present: torch.Tensor, p: float) -> torch.Tensor:
    """Hide each present input with probability p, keeping at least one input per row."""
    keep = torch.rand(present.shape, device=present.device) >= p
    dropped = present & keep
    # Rows that lost everything get back one of their inputs, chosen at random among the present ones.
    empty = ~dropped.any(dim=1) & present.any(dim=1)
    if empty.any():
        scores = torch.rand(present.shape, device=present.device).masked_fill(~present, -1.0)
        pick = torch.zeros_like(present).scatter_(1, scores.argmax(dim=1, keepdim=True), True)
        dropped = torch.where(empty[:, None], pick, dropped)
    return dropped


class BestWeights(pl.Callback):
    """Keep a copy of the best weights by the monitored metric (ties broken by validation loss); restore at the end."""

    def __init__(self, monitor: str, mode: str):
        self.monitor, self.sign = monitor, (1.0 if mode == "max" else -1.0)
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
            self.state = {k: v.detach().cpu().clone() for k, v in module.net.state_dict().items()}

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.state is not None:
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


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random number generator the training draws from: torch (CPU, CUDA), numpy, Python, the loader's."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": np_state[1],
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "loader": generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"], n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer(pl.Callback):
    """Save the whole training state at each epoch boundary; restore it at the start of a resumed run.

    Saved at the start of epoch k + 1 rather than at the end of epoch k: by then every callback (early stopping
    included, which Lightning runs after the others) has finished epoch k, and nothing has drawn a random number
    of epoch k + 1 yet (the loader's shuffle happens after this hook). A run resumed from it therefore draws the
    same numbers as the uninterrupted run and ends with the same weights, bit for bit on CPU."""

    def __init__(self, folder: Path, fingerprint: str, generator: torch.Generator, parts: dict[str, Any]):
        self.folder, self.fingerprint, self.generator, self.parts = folder, fingerprint, generator, parts
        self.resumed_from = 0

    def _state(self, trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, Any]:
        return {
            "net": module.net.state_dict(),
            "optimizers": [o.state_dict() for o in trainer.optimizers],
            "schedulers": [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs],
            "callbacks": {name: cb.state_dict() for name, cb in self.parts.items()},
            "rng": _rng_state(self.generator),
        }

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        from polymodal.training.checkpoint import load_checkpoint

        found = load_checkpoint(self.folder, self.fingerprint)
        if found is None:
            return
        epoch, state = found
        module.net.load_state_dict(state["net"])
        for opt, s in zip(trainer.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        for config, s in zip(trainer.lr_scheduler_configs, state["schedulers"], strict=True):
            config.scheduler.load_state_dict(s)
        for name, cb in self.parts.items():
            cb.load_state_dict(state["callbacks"][name])
        progress = trainer.fit_loop.epoch_progress
        for tracker in (progress.current, progress.total):
            tracker.ready = tracker.started = tracker.processed = tracker.completed = epoch
        _set_rng_state(state["rng"], self.generator)
        self.resumed_from = epoch
        print(f"resuming from the checkpoint after epoch {epoch} in {self.folder}")

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        from polymodal.training.checkpoint import save_checkpoint

        epoch = trainer.current_epoch  # epochs completed so far
        if epoch > self.resumed_from and trainer.is_global_zero:  # one writer in a distributed run
            save_checkpoint(self.folder, epoch, self.fingerprint, self._state(trainer, module))


def run_fingerprint(net: MultimodalNet, cfg: TrainConfig, rows: list[Rows]) -> str:
    """What a checkpoint must match to be resumed: the initial weights, the settings that change training, and
    the data (features and targets, or the streamed table)."""
    h = hashlib.sha256()
    skip = {"checkpoint_dir", "restart", "progress"}
    h.update(repr(sorted((k, v) for k, v in cfg.to_dict().items() if k not in skip)).encode())
    for k, v in net.state_dict().items():
        h.update(k.encode() + str(tuple(v.shape)).encode() + v.detach().cpu().contiguous().numpy().tobytes())
    for r in rows:
        r.fingerprint(h)
    return h.hexdigest()


def distributed_settings(cfg: TrainConfig) -> dict[str, Any]:
    """Trainer settings for one process or many. Under torchrun (or SLURM), devices and nodes left at their
    defaults are read from the launcher's environment, and the strategy becomes DDP."""
    import os

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


def _quiet_lightning() -> None:
    """Lightning's start-up banners and tips are noise in a CLI; real warnings still show."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*treespec.*",
        ".*does not have many workers.*",
        ".*litlogger.*",
        ".*has `__len__` defined.*",
        ".*all_gather is deprecated.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def train(
    net: MultimodalNet,
    task: Task,
    inputs: dict[str, Modality],
    train_rows: Rows,
    valid_rows: Rows,
    cfg: TrainConfig,
    callbacks: list[pl.Callback] | None = None,
    augmenters: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Fit `net` in place on `train_rows` (`MemoryRows` or `StreamRows`), validating on `valid_rows`; returns the
    history, best epoch and train seconds. `callbacks`: extra ones. `augmenters`: input -> a transform of its
    training batches (with `cfg.augment`), beside the built-in image augmentation. In a distributed run every
    process calls this and ends with the same weights."""
    _quiet_lightning()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    name, mode = task.monitor
    best = BestWeights(f"val_{name}", mode)
    history = History()
    stopping = pl.callbacks.EarlyStopping(f"val_{name}", mode=mode, patience=cfg.patience)
    extra = list(callbacks or [])
    callbacks = [best, history, stopping, *extra]
    generator = torch.Generator().manual_seed(cfg.seed)
    checkpointer = None
    if cfg.checkpoint_dir:
        folder = Path(cfg.checkpoint_dir)
        if cfg.restart and _rank() == 0:
            shutil.rmtree(folder, ignore_errors=True)
        parts = {"best": best, "history": history, "early_stopping": stopping}
        checkpointer = Checkpointer(folder, run_fingerprint(net, cfg, [train_rows, valid_rows]), generator, parts)
        from polymodal.training.checkpoint import load_checkpoint

        load_checkpoint(folder, checkpointer.fingerprint)  # a mismatch is refused before any work
        callbacks.append(checkpointer)
    if cfg.progress:
        callbacks.append(_progress_callback())
    trainer = pl.Trainer(
        max_epochs=cfg.max_epochs,
        accelerator=cfg.accelerator,
        precision=cfg.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=cfg.progress and isinstance(callbacks[-1], pl.callbacks.ProgressBar),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        callbacks=callbacks,
        use_distributed_sampler=False,  # the rows know how to split themselves (polymodal/training/data.py)
        **distributed_settings(cfg),
    )
    if len(valid_rows) < trainer.world_size:  # a process without validation rows has nothing to gather
        raise UserError(
            f"{len(valid_rows)} validation row(s) for {trainer.world_size} processes: each process needs at least one "
            "(a larger validation table or data.valid_fraction, or fewer devices)"
        )
    module = LitMultimodal(
        net, task, train_rows.pixel_inputs(inputs), cfg, (train_rows, valid_rows, generator), augmenters
    )
    start = time.perf_counter()
    net.train()  # pretrained backbones load in eval mode; dropout must be live while training
    trainer.fit(module)
    net.cpu().eval()
    return {
        "history": history.rows,
        "best_epoch": best.best_epoch,
        "epochs": trainer.current_epoch,
        # The training itself, from the moment every process has joined (Lightning's launcher starts the other
        # processes inside `fit`, and each reads and preprocesses the table before joining).
        "train_seconds": round(time.perf_counter() - (history.loop_start or start), 3),
        "fit_call_seconds": round(time.perf_counter() - start, 3),
        "resumed_from_epoch": checkpointer.resumed_from if checkpointer else 0,
        "processes": trainer.world_size,
        "global_rank": trainer.global_rank,
    }


def _rank() -> int:
    """This process's rank in a distributed run, from the launcher's environment (0 when there is none)."""
    import os

    ranks = [int(os.environ.get(k, "0")) for k in ("RANK", "NODE_RANK", "LOCAL_RANK")]
    return max(ranks)  # any non-zero one means this is not the first process


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


def _progress_callback() -> pl.Callback:
    import sys

    return pl.callbacks.RichProgressBar(leave=True) if sys.stdout.isatty() else EpochLog()
