"""`encoders.init_from`: a new fit's encoders start from the weights that earlier fitted model folders hold for the
same inputs, like `from_pretrained` for one branch. What it is for: a branch pre-trained on its own target (the
digits a video shows, the words its sound track speaks) before the fused task, whose label alone is too weak a
signal to teach the branches (benchmarks/av_video.py). `encoders.init_freeze` keeps those weights fixed.

Only the weights are copied: the folder must have been fitted with the same encoder sizes and preprocessing (the
fitted pixel statistics of scratch video frames are weights and come along). Parameters the new encoder lacks (a
GRU when the new frames encoder averages over time) are skipped; a parameter of another shape stops the fit.

Vocabularies are fitted per table, so a word's row in a scratch text encoder's embedding (or a category's in a
categorical encoder's) differs between the two fits: those tables are copied row by row, matched by the word or
category itself, never by position. What the new table has and the folder's lacks keeps its fresh weights."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from polymodal.config.sections import PREPROCESS_INTERNAL
from polymodal.errors import UserError

log = logging.getLogger(__name__)


def init_encoders(net: Any, cfg: Any, state: dict[str, Any] | None = None) -> dict[str, int]:
    """Load `cfg.encoders.init_from` into `net`'s encoders; returns {input name: tensors copied}. `state`: the new
    fit's fitted preprocessing (`Preprocessor.state`), whose vocabularies the embedding rows are matched to."""
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
        config, weights_there, preprocess, _ = load_folder(Path(folder))
        if config.get("compression", {}).get("quantize"):
            raise UserError(f"encoders.init_from[{name!r}]: {folder} is an int8 model; start from its float folder")
        theirs = list(Schema.from_dict(config["schema"]).inputs)
        if name not in theirs:
            raise UserError(f"encoders.init_from[{name!r}]: {folder} has no input {name!r} (it has {theirs})")
        prefix = f"encoders.{module_keys(theirs)[name]}."
        encoder = net.encoders[net.keys[name]]
        own = encoder.state_dict()
        weights = {
            k[len(prefix) :]: v for k, v in weights_there.items() if k.startswith(prefix) and k[len(prefix) :] in own
        }
        matched = _match_vocabularies(
            name, weights, own, preprocess.get("state", {}).get(name), (state or {}).get(name)
        )
        wrong = [k for k, v in weights.items() if tuple(v.shape) != tuple(own[k].shape)]
        if wrong or not weights:
            what = f"{wrong[0]} is {tuple(weights[wrong[0]].shape)} there" if wrong else "nothing matches"
            raise UserError(
                f"encoders.init_from[{name!r}]: the weights in {folder} do not fit this encoder ({what}): fit both "
                "with the same embed_dim, image_size, video_frames and audio settings"
            )
        ours = config.get("config", {}).get("preprocess")
        if ours is not None and {k: v for k, v in ours.items() if k not in PREPROCESS_INTERNAL} != _preprocess(cfg):
            log.warning("encoders.init_from[%r]: %s was fitted with other preprocess settings", name, folder)
        encoder.load_state_dict(weights, strict=False)
        if cfg.encoders.init_freeze:
            for p in encoder.parameters():
                p.requires_grad_(False)
        copied[name] = len(weights)
        log.info("encoders.init_from: %s from %s (%d of %d tensors)%s", name, folder, len(weights), len(own), matched)
    return copied


def _vocabularies(st: dict[str, Any] | None) -> dict[str, list[Any]]:
    """{embedding parameter: its vocabulary} of an input's fitted preprocessing: a scratch text encoder's words
    (`embed.weight`), a categorical encoder's categories per column (`embeds.J.weight`)."""
    if not st:
        return {}
    if "vocab" in st:
        return {"embed.weight": list(st["vocab"])}
    if "vocabs" in st:
        return {f"embeds.{j}.weight": list(v) for j, v in enumerate(st["vocabs"])}
    return {}


def _match_vocabularies(name: str, weights: dict, own: dict, theirs: Any, ours: Any) -> str:
    """Replace each embedding table in `weights` by our table with the rows of the words both vocabularies hold
    copied over (ids 0 and 1, padding and unknown, are the same in both); returns what to say in the log."""
    said = []
    old_vocab, new_vocab = _vocabularies(theirs), _vocabularies(ours)
    for key, new in new_vocab.items():
        if key not in weights or key not in old_vocab or weights[key].shape[1:] != own[key].shape[1:]:
            continue  # a table of another width stops the fit below, as any other shape
        old_index = {str(t): i + 2 for i, t in enumerate(old_vocab[key])}
        table = own[key].clone()
        table[:2] = weights[key][:2]
        pairs = [(j + 2, old_index[str(t)]) for j, t in enumerate(new) if str(t) in old_index]
        if pairs:
            rows_new, rows_old = zip(*pairs, strict=True)
            table[list(rows_new)] = weights[key][list(rows_old)]
        weights[key] = table
        said.append(f"{key}: {len(pairs)} of {len(new)} entries matched by value")
        if not pairs:
            log.warning("encoders.init_from[%r]: no word or category of %s is in the folder's vocabulary", name, key)
    return f"; {', '.join(said)}" if said else ""


def _preprocess(cfg: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: v for k, v in asdict(cfg.preprocess).items() if k not in PREPROCESS_INTERNAL}
