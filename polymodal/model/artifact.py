"""The model folder: config.json, model.safetensors, preprocess.json, metrics.json. Written atomically; no pickle."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from polymodal.files import atomic_folder, atomic_open, follow_umask

# atomic_folder lives in polymodal.files (one writer for every layer); re-exported for the callers importing it here.
__all__ = [
    "CONFIG", "METRICS", "PREPROCESS", "WEIGHTS",
    "atomic_folder", "load_folder", "read_json", "save_folder", "save_safetensors", "write_json",
]  # fmt: skip

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
    """Write JSON atomically: a temporary file in the same folder, then rename (mode from the umask)."""
    with atomic_open(path, "w") as f:
        json.dump(_clean(obj), f, indent=2, allow_nan=False)


def save_safetensors(tensors: dict[str, Any], path: Path) -> None:
    """safetensors.torch.save_file with the umask's mode (save_file alone leaves the file 0600: see follow_umask)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    follow_umask(path)


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def save_folder(
    folder: Path,
    config: dict,
    state_dict: dict,
    preprocess: dict,
    metrics: dict,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write the model folder atomically: config, weights (safetensors), preprocessing, metrics, extra files."""
    with atomic_folder(folder) as tmp:
        write_json(tmp / CONFIG, config)
        save_safetensors({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, tmp / WEIGHTS)
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
