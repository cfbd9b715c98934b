"""The search space of `polymodal tune`: dotted config paths -> ranges, choices or fixed values.

A space is a mapping `{path: spec}`, read from YAML or given as a dict:

    train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    encoders.embed_dim: {type: int, low: 32, high: 256, step: 32}
    fusion.name: {type: categorical, choices: [early, late]}
    train.seed: 3                       # anything else: a fixed value for every trial

The user's space overrides or extends the default one path by path. Every path is checked against the config
tree (an unknown path is a `ConfigError` naming the closest valid one) and every range is checked for emptiness
and for the setting's type before any trial starts.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polymodal.config import Config, ConfigError

SPEC_KEYS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"}, "categorical": {"choices"}}


@dataclass
class Param:
    """One searched setting: a float/int range or a list of choices."""

    path: str
    type: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)

    def suggest(self, trial: Any) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.path, self.choices)

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        d: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            d["log"] = True
        if self.step is not None:
            d["step"] = self.step
        return d


@dataclass
class Space:
    params: dict[str, Param] = field(default_factory=dict)  # searched
    fixed: dict[str, Any] = field(default_factory=dict)  # set to one value in every trial

    def suggest(self, trial: Any) -> dict[str, Any]:
        """One trial's settings: {path: value}, the fixed ones included."""
        return {p.path: p.suggest(trial) for p in self.params.values()} | dict(self.fixed)

    def to_dict(self) -> dict[str, Any]:
        return {k: p.to_dict() for k, p in self.params.items()} | dict(self.fixed)


def default_space(image_columns: bool, pretrained: bool) -> dict[str, Any]:
    """What `tune` searches when no space file says otherwise."""
    space: dict[str, Any] = {
        "fusion.name": {"type": "categorical", "choices": ["early", "late", "attention", "gmu", "low_rank"]},
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "encoders.embed_dim": {"type": "categorical", "choices": [32, 64, 128, 256]},
        "fusion.hidden": {"type": "categorical", "choices": [64, 128, 256]},
        "fusion.dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "train.weight_decay": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
        "train.batch_size": {"type": "categorical", "choices": [32, 64, 128]},
        "train.modality_dropout": {"type": "float", "low": 0.0, "high": 0.5},
    }
    if image_columns:
        space["preprocess.image_size"] = {"type": "categorical", "choices": [32, 48, 64]}
    if pretrained:
        space["encoders.freeze"] = {"type": "categorical", "choices": [True, False]}
    return space


def read_space(source: str | os.PathLike[str] | dict | None) -> dict[str, Any]:
    """A space file (YAML or JSON) or dict as a plain {path: spec} dict; None is an empty space."""
    if source is None:
        return {}
    if isinstance(source, dict):
        return dict(source)
    import yaml

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"search space file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a search space is a mapping of dotted paths to specs, not {type(data).__name__}")
    return data


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML (`train: {lr: {...}}`) and dotted keys (`train.lr: {...}`) mean the same."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "type" not in v and key not in Config().paths():
            out |= _flatten(v, key + ".")
        else:
            out[key] = v
    return out


def _check_value(cfg: Config, path: str, value: Any, what: str) -> None:
    try:
        cfg.set(path, value)
    except ConfigError as e:
        raise ConfigError(f"search space, {path}: {what} {value!r} does not fit the setting: {e}") from e


def build_space(raw: dict[str, Any], base: Config) -> Space:
    """Check every path, range and choice against the config tree; nothing is trained before this passes."""
    space = Space()
    probe = base.copy()  # values are tried on a copy, so the base stays as it was
    for path, spec in _flatten(raw).items():
        probe.get(path)  # ConfigError naming the closest valid path
        if not (isinstance(spec, dict) and "type" in spec):
            _check_value(probe, path, spec, "the fixed value")
            space.fixed[path] = spec
            continue
        kind = spec["type"]
        if kind not in SPEC_KEYS:
            raise ConfigError(f"search space, {path}: type must be one of {sorted(SPEC_KEYS)}, not {kind!r}")
        unknown = set(spec) - SPEC_KEYS[kind] - {"type"}
        if unknown:
            raise ConfigError(f"search space, {path}: unknown key(s) {sorted(unknown)} for type {kind}; "
                              f"allowed: {sorted(SPEC_KEYS[kind])}")  # fmt: skip
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"search space, {path}: empty or missing choices; give a non-empty list")
            for c in choices:
                _check_value(probe, path, c, "the choice")
            space.params[path] = Param(path, "categorical", choices=list(choices))
            continue
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"search space, {path}: a {kind} range needs both low and high")
        low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
        for name, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)):
                raise ConfigError(f"search space, {path}: {name} must be a finite number, not {v!r}")
        if kind == "int" and any(v is not None and float(v) != int(v) for v in (low, high, step)):
            raise ConfigError(f"search space, {path}: an int range needs whole numbers (low {low}, high {high})")
        if low > high:
            raise ConfigError(f"search space, {path}: empty range: low {low} > high {high}")
        if log and low <= 0:
            raise ConfigError(f"search space, {path}: a log range needs low > 0 (low is {low})")
        if step is not None and (step <= 0 or log):
            raise ConfigError(f"search space, {path}: step must be > 0 and cannot be combined with log")
        for v in (low, high):
            _check_value(probe, path, int(v) if kind == "int" else float(v), "the bound")
        space.params[path] = Param(path, kind, float(low), float(high), log, None if step is None else float(step))
    return space
