"""`encoders.init_from`: a new fit's encoders start from the weights that earlier fitted model folders hold for the
same inputs, like `from_pretrained` for one branch. What it is for: a branch pre-trained on its own target (the
digits a video shows, the words its sound track speaks) before the fused task, whose label alone is too weak a
signal to teach the branches (benchmarks/av_video.py). `encoders.init_freeze` keeps those weights fixed.

Only the weights are copied: the folder must have been fitted with the same encoder sizes and preprocessing (the
fitted pixel statistics of scratch video frames are weights and come along). Parameters the new encoder lacks (a
GRU when the new frames encoder averages over time) are skipped; a parameter of another shape stops the fit."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from polymodal.errors import UserError

log = logging.getLogger(__name__)


def init_encoders(net: Any, cfg: Any) -> dict[str, int]:
    """Load `cfg.encoders.init_from` into `net`'s encoders; returns {input name: tensors copied}."""
    from polymodal.data.schema import Schema
    from polymodal.model.artifact import load_folder
    from polymodal.model.network import module_keys

    init = cfg.encoders.init_from
    if not any(name in net.keys for name in init):
        raise UserError(f"encoders.init_from names {list(init)}, none of which this model has: {list(net.keys)}")
    copied: dict[str, int] = {}
    for name, folder in init.items():
        if name not in net.keys:  # left out of this fit (compare's single-input entries leave the others out)
            log.warning("encoders.init_from: %r is not an input of this model; skipped", name)
            continue
        if not (Path(folder) / "config.json").is_file():
            raise UserError(f"encoders.init_from[{name!r}]: {folder} is not a fitted model folder (no config.json)")
        config, state, _, _ = load_folder(Path(folder))
        if config.get("compression", {}).get("quantize"):
            raise UserError(f"encoders.init_from[{name!r}]: {folder} is an int8 model; start from its float folder")
        theirs = list(Schema.from_dict(config["schema"]).inputs)
        if name not in theirs:
            raise UserError(f"encoders.init_from[{name!r}]: {folder} has no input {name!r} (it has {theirs})")
        prefix = f"encoders.{module_keys(theirs)[name]}."
        encoder = net.encoders[net.keys[name]]
        own = encoder.state_dict()
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix) :] in own}
        wrong = [k for k, v in weights.items() if tuple(v.shape) != tuple(own[k].shape)]
        if wrong or not weights:
            what = f"{wrong[0]} is {tuple(weights[wrong[0]].shape)} there" if wrong else "nothing matches"
            raise UserError(
                f"encoders.init_from[{name!r}]: the weights in {folder} do not fit this encoder ({what}): fit both "
                "with the same embed_dim, image_size, video_frames and audio settings"
            )
        ours = config.get("config", {}).get("preprocess")
        if ours is not None and {k: v for k, v in ours.items() if k != "pretrained"} != _preprocess(cfg):
            log.warning("encoders.init_from[%r]: %s was fitted with other preprocess settings", name, folder)
        encoder.load_state_dict(weights, strict=False)
        if cfg.encoders.init_freeze:
            for p in encoder.parameters():
                p.requires_grad_(False)
        copied[name] = len(weights)
        log.info("encoders.init_from: %s from %s (%d of %d tensors)", name, folder, len(weights), len(own))
    return copied


def _preprocess(cfg: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: v for k, v in asdict(cfg.preprocess).items() if k != "pretrained"}
