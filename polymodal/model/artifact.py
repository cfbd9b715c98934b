"""The model folder: config.json, model.safetensors, preprocess.json, metrics.json. Written atomically; no pickle."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CONFIG, WEIGHTS, PREPROCESS, METRICS = "config.json", "model.safetensors", "preprocess.json", "metrics.json"


def _clean(obj: Any) -> Any:
    """JSON has no NaN: write it as null so every file is standard JSON (and paths as strings)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item"):
        return _clean(obj.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically: a temporary file in the same folder, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(obj), f, indent=2, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


@contextlib.contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; on success swap it into place, on failure remove it.
    A crash never leaves a half-written folder where the finished one belongs."""
    folder = Path(folder).resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        yield tmp
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_folder(
    folder: Path,
    config: dict,
    state_dict: dict,
    preprocess: dict,
    metrics: dict,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write the model folder atomically: config, weights (safetensors), preprocessing, metrics, extra files."""
    from safetensors.torch import save_file

    with atomic_folder(folder) as tmp:
        write_json(tmp / CONFIG, config)
        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp / WEIGHTS))
        write_json(tmp / PREPROCESS, preprocess)
        write_json(tmp / METRICS, metrics)
        for name, src in (extra_files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / name)
    return Path(folder).resolve()


def load_folder(folder: Path) -> tuple[dict, dict, dict, dict]:
    """Read (config, state_dict, preprocess, metrics). Weights come from safetensors only."""
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [n for n in (CONFIG, WEIGHTS, PREPROCESS) if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a polymodal model folder: missing {missing}")
    metrics = read_json(folder / METRICS) if (folder / METRICS).exists() else {}
    return (
        read_json(folder / CONFIG),
        load_file(str(folder / WEIGHTS)),
        read_json(folder / PREPROCESS),
        metrics,
    )
