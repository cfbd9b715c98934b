"""Building a tree: from a base (tree, mapping or file) and keyword settings on top, from a `--set path=value`
string, and from the flat config.json of a model folder written before the tree existed."""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from typing import Any

from polymodal.config.checks import _accepts, _accepts_str
from polymodal.config.sections import PREPROCESS_INTERNAL, EncodersConfig, PreprocessConfig, TrainConfig
from polymodal.config.tree import FLAT_KEYWORDS, Config, leaf_type


def parse_value(path: str, text: str) -> Any:
    """A `--set path=value` string as the setting's type (YAML syntax: 1e-3, true, [a, b], {k: v}, null)."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    t = leaf_type(path)
    if _accepts_str(t) and not isinstance(value, str) and value is not None and not _accepts(t, value):
        value = text  # a name that YAML would read as a number or a boolean
    return value


_ENCODER_FIELDS = {f.name for f in fields(EncodersConfig)}


def build_config(config: Config | dict | str | os.PathLike[str] | None = None, **settings: Any) -> Config:
    """A Config from a base (tree, mapping or YAML/JSON file) and keyword settings on top: the flat keywords of
    `MultimodalPredictor` (`lr=`, `fusion=`, `text_encoder=`, ...), sections (`train={...}`), dotted paths
    (`**{"train.lr": 1e-3}`), `preprocess=` as a mapping, `encoders=` as {column: encoder name}."""
    if isinstance(config, Config):
        cfg = config.copy()
    elif isinstance(config, dict):
        cfg = Config.from_dict(config)
    elif config is None:
        cfg = Config()
    else:
        cfg = Config.from_file(config)
    for key, value in settings.items():
        if key == "fusion" and isinstance(value, str):
            cfg.set("fusion.name", value)
        elif key == "encoders" and isinstance(value, dict) and not set(value) & _ENCODER_FIELDS:
            cfg.set("encoders.columns", value)  # the flat keyword: {column: encoder name}
        elif key == "preprocess" and isinstance(value, PreprocessConfig):
            cfg.set("preprocess", {k: v for k, v in asdict(value).items() if k not in PREPROCESS_INTERNAL})
        elif key in FLAT_KEYWORDS:
            if value is None:
                continue  # None: keep the default (or the base's value)
            if key == "modalities" and isinstance(value, dict):
                value = {c: getattr(m, "value", m) for c, m in value.items()}
            cfg.set(FLAT_KEYWORDS[key], value)
        else:
            cfg.set(key, value)
    return cfg


def from_legacy(saved: dict[str, Any], preprocess: dict[str, Any] | None = None) -> Config:
    """The tree of a model folder written before it existed (config.json with flat keys)."""
    cfg = Config()
    cfg.set("data.label", saved["label"])
    cfg.set("data.problem_type", saved["schema"]["problem_type"])
    cfg.set("data.valid_fraction", saved.get("valid_fraction", 0.1))
    cfg.set("data.ignore", saved["schema"].get("ignored", []))
    cfg.set("fusion", {"name": saved["fusion"], "hidden": saved["hidden"], "dropout": saved["dropout"]})
    cfg.set("encoders.embed_dim", saved["embed_dim"])
    train = {k: v for k, v in saved.get("train", {}).items() if k in {f.name for f in fields(TrainConfig)}}
    cfg.update({"train": train})
    if preprocess is not None:
        known = {f.name for f in fields(PreprocessConfig)}
        cfg.update({"preprocess": {k: v for k, v in preprocess.items() if k in known and k not in PREPROCESS_INTERNAL}})
    return cfg
