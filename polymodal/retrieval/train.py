"""Contrastive training of an `AlignNet` with Lightning, on the Trainer and callbacks of `polymodal.training.trainer`:
best weights kept in memory (no pickled checkpoints), early stopping on validation recall@1, `train.time_limit`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from polymodal.model.batch import Collate
from polymodal.preprocess import Features
from polymodal.preprocess.augment import augment_images
from polymodal.retrieval.metrics import recall_at_1
from polymodal.retrieval.network import AlignNet, contrastive_loss
from polymodal.training.config import TrainConfig
from polymodal.training.trainer import begin, make_optimizer, make_trainer

MONITOR = "val_recall_at_1"


class LitAlign(pl.LightningModule):
    def __init__(self, net: AlignNet, anchor: str, image_inputs: list[str], cfg: TrainConfig, labelled: bool,
                 augmenters: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None):  # fmt: skip
        super().__init__()
        self.net, self.anchor, self.image_inputs, self.cfg, self.labelled = net, anchor, image_inputs, cfg, labelled
        self.augmenters = augmenters or {}  # input -> its own training-batch transform (audio's SpectralWarp)
        self.others = [n for n in net.input_names if n != anchor]
        self.col = {n: j for j, n in enumerate(net.input_names)}
        self._val: list[dict[str, Any]] = []

    def _losses(self, batch: dict, augment: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs, present = batch["inputs"], batch["present"]
        labels = batch.get("target") if self.labelled else None
        emb = {}
        for name in self.net.input_names:
            x = inputs[name]
            if augment and name in self.image_inputs:
                x = augment_images(x, rotate=self.cfg.image_rotate, scale=self.cfg.image_scale)
            if augment and name in self.augmenters:
                x = self.augmenters[name](x)
            emb[name] = self.net.embed(name, x)
        total, terms = torch.zeros((), device=present.device), 0
        for name in self.others:  # every column is pulled towards the anchor's space
            both = present[:, self.col[name]] & present[:, self.col[self.anchor]]
            if int(both.sum()) < 2:
                continue
            lab = labels[both] if labels is not None else None
            total = total + contrastive_loss(emb[name][both], emb[self.anchor][both], self.net.scale(), lab)
            terms += 1
        return total / max(terms, 1), emb

    def training_step(self, batch: dict, _: int) -> torch.Tensor:
        loss, _ = self._losses(batch, augment=self.cfg.augment)
        n = batch["present"].shape[0]
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("temperature", 1.0 / self.net.scale().detach(), on_step=False, on_epoch=True, batch_size=n)
        return loss

    def validation_step(self, batch: dict, _: int) -> None:
        loss, emb = self._losses(batch, augment=False)
        self._val.append(
            {
                "loss": float(loss) * len(batch["present"]),
                "emb": {k: v.detach().float().cpu().numpy() for k, v in emb.items()},
                "present": batch["present"].cpu().numpy(),
                "target": batch["target"].cpu().numpy() if "target" in batch else None,
            }
        )

    def on_validation_epoch_end(self) -> None:
        n = sum(len(v["present"]) for v in self._val)
        loss = sum(v["loss"] for v in self._val) / max(n, 1)
        emb = {k: np.concatenate([v["emb"][k] for v in self._val]) for k in self.net.input_names}
        present = np.concatenate([v["present"] for v in self._val])
        labels = np.concatenate([v["target"] for v in self._val]) if self.labelled else None
        self._val.clear()
        self.log("val_loss", loss, prog_bar=True)
        self.log(MONITOR, validation_recall(emb, present, self.anchor, self.col, labels), prog_bar=True)

    def configure_optimizers(self):
        return make_optimizer(self, self.cfg)


def validation_recall(
    emb: dict[str, np.ndarray], present: np.ndarray, anchor: str, col: dict[str, int], labels: np.ndarray | None
) -> float:
    """Mean recall@1 over every (column -> anchor) and (anchor -> column) direction, on rows with both present."""
    scores = []
    for name in emb:
        if name == anchor:
            continue
        both = present[:, col[name]] & present[:, col[anchor]]
        q, g = emb[name][both], emb[anchor][both]
        lab = labels[both] if labels is not None else None
        scores += [recall_at_1(q, g, lab, lab), recall_at_1(g, q, lab, lab)]
    return float(np.mean(scores)) if scores else 0.0


def train_align(
    net: AlignNet,
    anchor: str,
    image_inputs: list[str],
    train_x: Features,
    train_y: np.ndarray | None,
    valid_x: Features,
    valid_y: np.ndarray | None,
    cfg: TrainConfig,
    augmenters: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Fit `net` in place; returns the history, best epoch, epochs run, train seconds and how the run stopped
    (`Watchers.results`). `augmenters`: input -> a transform of its training batches (with `cfg.augment`)."""
    watch = begin(cfg, MONITOR, "max")
    trainer = make_trainer(cfg, watch.callbacks(), distributed=False)
    module = LitAlign(net, anchor, image_inputs, cfg, labelled=train_y is not None, augmenters=augmenters)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        range(len(train_x)), batch_size=cfg.batch_size, shuffle=True, collate_fn=Collate(train_x, train_y),
        generator=generator, drop_last=len(train_x) > cfg.batch_size,
    )  # fmt: skip
    # Validation embeds every row, then ranks them all against each other: batch size does not change the score.
    valid_loader = DataLoader(range(len(valid_x)), batch_size=2 * cfg.batch_size, collate_fn=Collate(valid_x, valid_y))
    start = time.perf_counter()
    net.train()
    trainer.fit(module, train_loader, valid_loader)
    net.cpu().eval()
    return watch.results(trainer, cfg, train_seconds=round(time.perf_counter() - start, 3))
