"""The whole tree, `Config`: reading and writing it (mappings, YAML/JSON files), settings by dotted path, and
the messages that name the closest valid path when one is mistyped."""

from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from polymodal.config.checks import ConfigError, _check, _hints
from polymodal.config.sections import (
    PREPROCESS_INTERNAL,
    AlignConfig,
    DataConfig,
    DecoderConfig,
    EncodersConfig,
    FusionConfig,
    PreprocessConfig,
    PrivacyConfig,
    RLConfig,
    TrainConfig,
)

SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "privacy": PrivacyConfig,
    "preprocess": PreprocessConfig,
    "encoders": EncodersConfig,
    "fusion": FusionConfig,
    "decoder": DecoderConfig,
    "train": TrainConfig,
    "align": AlignConfig,
    "rl": RLConfig,
}

# The keywords `MultimodalPredictor` took before the tree (and still takes), and where each now lives.
FLAT_KEYWORDS: dict[str, str] = {
    "label": "data.label",
    "problem_type": "data.problem_type",
    "modalities": "data.modalities",
    "ignore": "data.ignore",
    "valid_fraction": "data.valid_fraction",
    "group_by": "data.group_by",
    "split_by": "data.split_by",
    "on_bad_rows": "data.on_bad_rows",
    "streaming": "data.streaming",
    "chunk_rows": "data.chunk_rows",
    "embed_dim": "encoders.embed_dim",
    "preset": "encoders.preset",
    "freeze": "encoders.freeze",
    "finetune_layers": "encoders.finetune_layers",
    "lora": "encoders.lora",
    "cache_dir": "encoders.cache_dir",
    "text_encoder": "encoders.text.name",
    "image_encoder": "encoders.image.name",
    "audio_encoder": "encoders.audio.name",
    "anonymize": "privacy.anonymize",
    "hidden": "fusion.hidden",
    "dropout": "fusion.dropout",
    **{f.name: f"train.{f.name}" for f in fields(TrainConfig)},
}


@dataclass
class Config:
    """The whole tree. `Config.from_dict`, `from_yaml`, `get`/`set` by dotted path, `to_dict`/`to_yaml`."""

    data: DataConfig = field(default_factory=DataConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    rl: RLConfig = field(default_factory=RLConfig)

    # ---- reading and writing ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        cfg = cls()
        cfg.update(d)
        return cfg

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Config:
        """A YAML or JSON file of the tree (nested sections, or dotted keys, or both)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        text = path.read_text()
        if path.suffix == ".json":
            d = json.loads(text)
        else:
            import yaml

            try:
                d = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ConfigError(f"{path} must hold a mapping of settings, not {type(d).__name__}")
        return cls.from_dict(d)

    from_yaml = from_file

    def to_dict(self, internal: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not internal:
            for name in PREPROCESS_INTERNAL:
                d["preprocess"].pop(name, None)
            d["train"] = self.train.to_dict()
        return d

    def to_yaml(self, path: str | os.PathLike[str] | None = None) -> str:
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    # ---- dotted paths ----------------------------------------------------------------------------------
    @classmethod
    def paths(cls) -> list[str]:
        """Every user setting's dotted path (dict-valued settings such as `data.modalities` are one leaf)."""
        return [p for p, _ in _leaves(cls, "")]

    def get(self, path: str) -> Any:
        obj, name = self._parent(path)
        return getattr(obj, name)

    def set(self, path: str, value: Any) -> None:
        """Set one setting; a section path (`fusion`) takes a mapping, or a string for sections with a name."""
        obj, name = self._parent(path)
        hint = _hints(type(obj))[name]
        current = getattr(obj, name)
        if is_dataclass(current):
            if isinstance(value, str) and any(f.name == "name" for f in fields(current)):
                value = {"name": value}
            if is_dataclass(value):
                value = asdict(value)
            if not isinstance(value, dict):
                raise ConfigError(f"{path} is a section: give a mapping of its settings, not {value!r}")
            for k, v in value.items():
                self.set(f"{path}.{k}", v)
            return
        meta = {f.name: f.metadata for f in fields(obj)}[name]
        value = _check(value, hint, path)
        if "choices" in meta and value not in meta["choices"]:
            close = difflib.get_close_matches(str(value), [str(c) for c in meta["choices"] if c is not None], 1)
            hint_ = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{path} must be one of {list(meta['choices'])}, not {value!r}{hint_}")
        if meta.get("positive") and value is not None and not 0 < value < math.inf:
            raise ConfigError(f"{path} must be a positive number, not {value!r}")
        if "range" in meta and value is not None and not meta["range"][0] <= value <= meta["range"][1]:
            raise ConfigError(f"{path} must be from {meta['range'][0]} to {meta['range'][1]}, not {value!r}")
        setattr(obj, name, value)

    def update(self, d: dict[str, Any], prefix: str = "") -> Config:
        """Apply a (nested and/or dotted) mapping of settings."""
        for key, value in d.items():
            path = f"{prefix}{key}"
            obj, name = self._parent(path)
            if isinstance(value, dict) and is_dataclass(getattr(obj, name)):
                self.update(value, prefix=f"{path}.")
            else:
                self.set(path, value)
        return self

    def _parent(self, path: str) -> tuple[Any, str]:
        if not isinstance(path, str) or not path:
            raise ConfigError(f"a setting's path must be a dotted string such as 'train.lr', not {path!r}")
        parts = path.split(".")
        obj: Any = self
        for i, part in enumerate(parts):
            names = [f.name for f in fields(obj)]
            if part not in names:
                raise ConfigError(unknown_key_message(".".join(parts[: i + 1]), path))
            if {f.name: f for f in fields(obj)}[part].metadata.get("internal"):
                raise ConfigError(f"{'.'.join(parts[: i + 1])} is set by polymodal itself, not a setting")
            if i < len(parts) - 1:
                obj = getattr(obj, part)
                if not is_dataclass(obj):
                    raise ConfigError(f"{'.'.join(parts[: i + 1])} is a setting, not a section: {path!r} is unknown")
        return obj, parts[-1]

    def copy(self) -> Config:
        import copy

        return copy.deepcopy(self)

    def diff(self) -> dict[str, Any]:
        """The settings that differ from the defaults, by dotted path."""
        default = Config()
        return {p: self.get(p) for p in self.paths() if self.get(p) != default.get(p)}


class TreeSettings:
    """For a model object that holds its config tree as `config_`: the settings read most, by their old names."""

    config_: Config

    @property
    def label(self) -> str | None:
        return self.config_.data.label

    @property
    def train_config(self) -> TrainConfig:
        return self.config_.train

    @property
    def cache_dir(self) -> Path | None:
        return Path(self.config_.encoders.cache_dir) if self.config_.encoders.cache_dir else None


# Names other toolkits use for a setting, so the error can point at ours.
ALIASES = {
    "learning_rate": "lr", "epochs": "max_epochs", "num_epochs": "max_epochs", "wd": "weight_decay",
    "bs": "batch_size", "embedding_dim": "embed_dim", "embedding_size": "embed_dim", "hidden_size": "hidden",
    "hidden_dim": "hidden", "type": "name", "fusion_type": "name", "early_stopping_patience": "patience",
    "target": "label", "label_column": "label", "modality": "modalities",
}  # fmt: skip


def closest_key(key: str) -> str | None:
    """The valid path a mistyped one most likely meant."""
    valid = Config.paths() + list(SECTIONS)
    parent, _, last = key.rpartition(".")
    last = ALIASES.get(last, last)
    if f"{parent}.{last}".lstrip(".") in valid:
        return f"{parent}.{last}".lstrip(".")
    siblings = {p.rpartition(".")[2]: p for p in valid if p.rpartition(".")[0] == parent}
    match = difflib.get_close_matches(last, list(siblings), 1, cutoff=0.6)
    if match:
        return siblings[match[0]]
    anywhere = [p for p in valid if p.rpartition(".")[2] == last]
    if anywhere:
        return anywhere[0]
    match = difflib.get_close_matches(key, valid, 1, cutoff=0.5)
    if match:
        return match[0]
    by_last = {p.rpartition(".")[2]: p for p in valid}
    match = difflib.get_close_matches(last, list(by_last), 1, cutoff=0.6)
    return by_last[match[0]] if match else None


def unknown_key_message(key: str, path: str | None = None) -> str:
    """'unknown setting ...; did you mean ...?' with the closest valid path."""
    close = closest_key(key if path is None else path)
    hint = f"; did you mean {close!r}?" if close else f"; valid sections: {', '.join(SECTIONS)}"
    return f"unknown setting {path or key!r}{hint}"


def _leaves(cls: type, prefix: str) -> list[tuple[str, Any]]:
    out = []
    hints = _hints(cls)
    for f in fields(cls):
        if f.metadata.get("internal"):
            continue
        t = hints[f.name]
        if is_dataclass(t):
            out += _leaves(t, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", t))
    return out


def leaf_type(path: str) -> Any:
    """The type hint of a setting, for search spaces and CLI parsing."""
    for p, t in _leaves(Config, ""):
        if p == path:
            return t
    raise ConfigError(unknown_key_message(path))
