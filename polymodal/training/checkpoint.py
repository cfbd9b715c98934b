"""The training checkpoint on disk: nested state (dicts, lists, numbers, tensors) as safetensors + JSON, no pickle.

A checkpoint folder holds, per saved epoch, `epoch-NNNN.safetensors` (every tensor) and `epoch-NNNN.json` (the
rest, with each tensor replaced by a reference to its key), and `latest.json`, which names the last complete
epoch and the run's fingerprint. Each file is written to a temporary name and renamed, and `latest.json` is
renamed last, so a process killed at any moment leaves the previous complete checkpoint readable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polymodal.errors import UserError
from polymodal.files import follow_umask, make_temp_file

LATEST = "latest.json"
_TENSOR, _NDARRAY, _TUPLE = "__tensor__", "__ndarray__", "__tuple__"


class CheckpointMismatch(UserError):
    """The checkpoint was written by a run with other data or settings."""


def _split(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """JSON-able copy of `obj` with every tensor moved to `tensors` under a unique key."""
    if isinstance(obj, torch.Tensor):
        key = path or "root"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR: key}
    if isinstance(obj, np.ndarray):
        key = path or "root"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {_NDARRAY: key}
    if isinstance(obj, dict):
        if not all(isinstance(k, str | int) for k in obj):
            raise TypeError(f"checkpoint keys must be str or int: {list(obj)[:5]}")
        # int keys (optimizer state is keyed by parameter index) are kept apart from str keys, to come back as ints
        return {
            "__dict__": [[k, _split(v, tensors, f"{path}.{k}" if path else str(k))] for k, v in obj.items()],
        }
    if isinstance(obj, tuple):
        return {_TUPLE: [_split(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_split(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (at {path!r})")


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _NDARRAY in obj:
            return tensors[obj[_NDARRAY]].numpy()
        if _TUPLE in obj:
            return tuple(_join(v, tensors) for v in obj[_TUPLE])
        return {k: _join(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def _replace_atomically(path: Path, write) -> None:
    fd, tmp = make_temp_file(path)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(folder: Path, epoch: int, fingerprint: str, state: dict[str, Any]) -> None:
    """Write `state` as the checkpoint after `epoch` completed epochs; older epochs' files are removed after."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    index = _split(state, tensors, "")
    stem = f"epoch-{epoch:04d}"
    _replace_atomically(folder / f"{stem}.safetensors", lambda p: (save_file(tensors, p), follow_umask(p)))
    _replace_atomically(folder / f"{stem}.json", lambda p: Path(p).write_text(json.dumps(index, allow_nan=True)))
    latest = {"epoch": epoch, "fingerprint": fingerprint, "stem": stem, "format": 1}
    _replace_atomically(folder / LATEST, lambda p: Path(p).write_text(json.dumps(latest)))
    for f in folder.glob("epoch-*"):
        if not f.name.startswith(stem + "."):
            f.unlink(missing_ok=True)


def load_checkpoint(folder: Path, fingerprint: str) -> tuple[int, dict[str, Any]] | None:
    """(completed epochs, state) of the checkpoint in `folder`, or None if there is none.

    Raises `CheckpointMismatch` if it belongs to a run with other data or settings."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / LATEST).exists():
        return None
    latest = json.loads((folder / LATEST).read_text())
    if latest.get("fingerprint") != fingerprint:
        raise CheckpointMismatch(
            f"the training checkpoint in {folder} was written by a run with other data or settings, so it cannot "
            "be resumed. Pass --restart (Python: train_config.restart = True) to start over, or remove that folder."
        )
    stem = latest["stem"]
    tensors = load_file(str(folder / f"{stem}.safetensors"))
    index = json.loads((folder / f"{stem}.json").read_text())
    return int(latest["epoch"]), _join(index, tensors)
