"""The error of the config tree and the check of a value against a setting's type hint."""

from __future__ import annotations

import os
import types
import typing
from typing import Any, Union

from polymodal.errors import UserError


class ConfigError(UserError):
    """A setting that does not exist or has the wrong type; the message names the key and the closest valid one."""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _check(value: Any, t: Any, path: str) -> Any:
    """`value` as type `t`, or a ConfigError naming the path. ints pass as floats; nothing else is converted."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if t is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, path)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{path} must be {' or '.join(_type_name(a) for a in args)}, not {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, not {value!r}")
        vt = args[1] if args else Any
        return {str(k): _check(v, vt, f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, not {value!r}")
        return [_check(v, args[0] if args else Any, path) for v in value]
    if t is bool:
        if isinstance(value, bool):
            return value
    elif t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif t is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif t is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
    elif isinstance(value, t):
        return value
    raise ConfigError(f"{path} must be {_type_name(t)}, not {value!r} ({type(value).__name__})")


def _accepts(t: Any, value: Any) -> bool:
    try:
        _check(value, t, "")
        return True
    except ConfigError:
        return False


def _accepts_str(t: Any) -> bool:
    return t is str or (typing.get_origin(t) in (Union, types.UnionType) and str in typing.get_args(t))
