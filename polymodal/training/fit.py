"""The Lightning module of a `MultimodalNet`, the resumable checkpoint callback, and `train()` (the Trainer and the
callbacks every run has: `polymodal.training.trainer`, `polymodal.training.callbacks`).

Best weights are kept in memory and restored at the end instead of Lightning's pickled checkpoints, so
nothing in a run is ever written or read with pickle. With `TrainConfig.checkpoint_dir`, `Checkpointer` writes
the whole training state (weights, optimizer, early stopping, best weights, history, every RNG) as safetensors +
JSON at each epoch boundary, and the same training run again resumes from it and ends with the same weights.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from polymodal.data.schema import Modality
from polymodal.errors import UserError
from polymodal.model.distinct import expand_batch
from polymodal.model.network import MultimodalNet
from polymodal.preprocess.augment import augment_images
from polymodal.tasks import Task
from polymodal.training.callbacks import timer_of
from polymodal.training.config import TrainConfig
from polymodal.training.data import MemoryRows, StreamRows
from polymodal.training.trainer import begin, make_optimizer, make_trainer

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
        self._val_loss: list[torch.Tensor] = []  # text: each validation batch's summed loss

    # The loaders are made here, not before `fit`: only now do the process's rank and the world size exist.
    def train_dataloader(self):
        rows, _, generator = self.data
        t = self.trainer
        return rows.loader(self.cfg.batch_size, True, generator, t.global_rank, t.world_size, self.cfg.seed,
                           workers=self.cfg.num_workers, group=self.cfg.group_batches)  # fmt: skip

    def val_dataloader(self):
        _, rows, generator = self.data
        t = self.trainer
        return rows.loader(self.cfg.batch_size, False, generator, t.global_rank, t.world_size, self.cfg.seed,
                           workers=self.cfg.num_workers)  # fmt: skip

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(batch["inputs"], batch["present"], **distinct(batch))

    def on_after_batch_transfer(self, batch: dict, _: int) -> dict:
        # A file shared by rows comes once with each row's index (model/distinct.py); a text network takes rows.
        return batch if getattr(self.net, "distinct_inputs", False) else expand_batch(batch)

    def training_step(self, batch: dict, _: int) -> torch.Tensor:
        # Augmentation transforms the batch's inputs: a file shared by rows is augmented once for all of them.
        inputs, present = dict(batch["inputs"]), batch["present"]
        if self.cfg.augment:
            for name in self.image_inputs:
                inputs[name] = augment_images(inputs[name], rotate=self.cfg.image_rotate, scale=self.cfg.image_scale)
            for name, augment in self.augmenters.items():
                inputs[name] = augment(inputs[name])
        if self.cfg.modality_dropout > 0 and present.shape[1] > 1:
            present = drop_modalities(present, self.cfg.modality_dropout)
        # A text model is trained with teacher forcing: it reads the target it is asked for.
        teacher = (batch["target"],) if self.task.is_text else ()
        loss = self.task.loss(self.net(inputs, present, *teacher, **distinct(batch)), batch["target"])
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=present.shape[0],
                 sync_dist=True)  # fmt: skip
        return loss

    def validation_step(self, batch: dict, _: int) -> None:
        if self.task.is_text:  # the loss teacher-forced, the metric on greedily generated text (batched)
            n = batch["target"].shape[0]
            loss = self.task.loss(self.net(batch["inputs"], batch["present"], batch["target"]), batch["target"])
            self._val_loss.append(loss.detach().float() * n)
            self._val.append((self.net(batch["inputs"], batch["present"], beam_size=1, n_best=1), batch["target"]))
            return
        logits = self(batch)
        self._val.append((logits.detach().float(), batch["target"]))

    def on_validation_epoch_end(self) -> None:
        logits = self._gather(torch.cat([v[0] for v in self._val]))
        target = self._gather(torch.cat([v[1] for v in self._val]))
        self._val.clear()
        name, _ = self.task.monitor
        if self.task.is_text:
            total = self._gather(torch.stack(self._val_loss)).sum()
            self._val_loss.clear()
            self.log("val_loss", total / max(len(target), 1), prog_bar=True)
            self.log(f"val_{name}", self.task.score(target.cpu().numpy(), self.task.outputs(logits)), prog_bar=True)
            return
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
        return make_optimizer(self, self.cfg)

    def on_fit_start(self) -> None:
        # On a GPU, trade compute for memory in fine-tuned backbones (gradient checkpointing).
        from polymodal.encoders import FineTuned

        if self.device.type == "cuda":
            for m in self.net.modules():
                if isinstance(m, FineTuned) and hasattr(m.backbone.model, "gradient_checkpointing_enable"):
                    m.backbone.model.gradient_checkpointing_enable()


def distinct(batch: dict) -> dict[str, Any]:
    """The network's `index` argument when the batch carries one."""
    return {"index": batch["index"]} if "index" in batch else {}


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
            if name in state["callbacks"]:  # a checkpoint of a run without a time limit has no timer
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
    # The time limit decides where training stops, not what it computes until then: a killed run may be resumed
    # with another one.
    skip = {"checkpoint_dir", "restart", "progress", "time_limit"}
    h.update(repr(sorted((k, v) for k, v in cfg.to_dict().items() if k not in skip)).encode())
    for k, v in net.state_dict().items():
        h.update(k.encode() + str(tuple(v.shape)).encode() + v.detach().cpu().contiguous().numpy().tobytes())
    for r in rows:
        r.fingerprint(h)
    return h.hexdigest()


def train(
    net: MultimodalNet,
    task: Task,
    inputs: dict[str, Modality],
    train_rows: Rows,
    valid_rows: Rows,
    cfg: TrainConfig,
    callbacks: list[pl.Callback] | None = None,
    augmenters: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    keep: str = "best",
) -> dict[str, Any]:
    """Fit `net` in place on `train_rows` (`MemoryRows` or `StreamRows`), validating on `valid_rows`; returns the
    history, best epoch, epochs run, train seconds and how the run stopped (`Watchers.results`: `stopped_by`,
    `stopped_epoch`, `time_limit`, `time_limited`); the best epoch's weights are loaded however it stopped,
    `cfg.time_limit` included. `callbacks`: extra ones. `augmenters`: input -> a transform of its
    training batches (with `cfg.augment`), beside the built-in image augmentation. `keep`: "best" (the weights of
    the best validation epoch) or "last" (those of the last epoch: a refit, whose validation rows are training rows).
    In a distributed run every process calls this and ends with the same weights."""
    name, mode = task.monitor
    watch = begin(cfg, f"val_{name}", mode)
    watch.best.restore = keep == "best"
    callbacks = [*watch.callbacks(), *(callbacks or [])]
    generator = torch.Generator().manual_seed(cfg.seed)
    checkpointer = None
    if cfg.checkpoint_dir:
        folder = Path(cfg.checkpoint_dir)
        if cfg.restart and _rank() == 0:
            shutil.rmtree(folder, ignore_errors=True)
        parts = {"best": watch.best, "history": watch.history, "early_stopping": watch.stopping}
        checkpointer = Checkpointer(folder, run_fingerprint(net, cfg, [train_rows, valid_rows]), generator, parts)
        from polymodal.training.checkpoint import load_checkpoint

        load_checkpoint(folder, checkpointer.fingerprint)  # a mismatch is refused before any work
        callbacks.append(checkpointer)
    trainer = make_trainer(cfg, callbacks)
    if checkpointer is not None and (timer := timer_of(trainer)) is not None:
        checkpointer.parts["timer"] = timer  # a resumed run spends what is left of the time limit, not all of it
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
    return watch.results(
        trainer,
        cfg,
        # The training itself, from the moment every process has joined (Lightning's launcher starts the other
        # processes inside `fit`, and each reads and preprocesses the table before joining).
        train_seconds=round(time.perf_counter() - (watch.history.loop_start or start), 3),
        fit_call_seconds=round(time.perf_counter() - start, 3),
        resumed_from_epoch=checkpointer.resumed_from if checkpointer else 0,
        processes=trainer.world_size,
        global_rank=trainer.global_rank,
    )


def _rank() -> int:
    """This process's rank in a distributed run, from the launcher's environment (0 when there is none)."""
    import os

    ranks = [int(os.environ.get(k, "0")) for k in ("RANK", "NODE_RANK", "LOCAL_RANK")]
    return max(ranks)  # any non-zero one means this is not the first process
