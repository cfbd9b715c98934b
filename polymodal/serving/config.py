"""Settings of one `polymodal serve` process: the model folder, micro-batching and the request limits."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from polymodal.data.media import MAX_IMAGE_PIXELS
from polymodal.errors import UserError

# The app factory of each worker process reads its settings from here (uvicorn starts workers by import string).
CONFIG_ENV = "POLYMODAL_SERVE_CONFIG"


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ServeConfig:
    model: str
    max_batch_size: int = 32
    # 0: adaptive batching (a batch is what queued while the model was busy); > 0: also wait this long for company
    max_wait_ms: float = 0.0
    max_queue: int = 256  # rows admitted (decoding, waiting, in a pass); beyond it 503 + Retry-After at once
    max_body_bytes: int = 16 * 1024 * 1024
    max_instances: int = 64
    max_image_pixels: int = 16_777_216  # 4096 x 4096
    max_audio_seconds: float = 60.0
    max_text_chars: int = 10_000
    api_key_env: str | None = None
    # With a key: also leave the page, /docs, /openapi.json and /metrics open (they show the columns and traffic).
    public_docs: bool = False
    warmup: bool = True
    runtime: str = "torch"  # or "onnx": `model` is an exported .onnx (or a folder with model.onnx); no torch
    threads: int = 1  # intra-op threads of the model per worker (small batches gain nothing from more)
    # PyTorch runtime: the network's forward through a BatchNorm-folded copy, exported in memory to ONNX Runtime (with
    # the onnx extra) or traced, where it gives the same outputs (polymodal/model/fast.py); False: the network as it is
    trace: bool = True
    decode_threads: int | None = None  # threads checking and decoding requests' files; None: one per core

    def __post_init__(self) -> None:
        positive = ("max_batch_size", "max_queue", "max_body_bytes", "max_instances", "max_image_pixels", "threads")
        for name in (*positive, "max_audio_seconds", "max_text_chars"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, not {getattr(self, name)}")
        if self.decode_threads is not None and self.decode_threads <= 0:
            raise UserError(f"decode_threads must be positive, not {self.decode_threads}")
        if self.max_wait_ms < 0:
            raise UserError(f"max_wait_ms must be >= 0, not {self.max_wait_ms}")
        if self.max_image_pixels > MAX_IMAGE_PIXELS:
            raise UserError(f"max_image_pixels may be at most {MAX_IMAGE_PIXELS} (the decoder's own limit)")
        folder = Path(self.model)
        if self.runtime not in ("torch", "onnx"):
            raise UserError(f"runtime must be torch or onnx, not {self.runtime!r}")
        if self.runtime == "onnx":
            if not (folder.suffix == ".onnx" and folder.is_file()) and not (folder / "model.onnx").is_file():
                raise UserError(f"{self.model!r} is not an ONNX graph (a .onnx file or a folder with model.onnx)")
        elif not (folder / "config.json").is_file():
            raise UserError(f"{self.model!r} is not a model folder (no config.json in it)")
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise UserError(f"--api-key-env {self.api_key_env}: that environment variable is unset or empty")

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def limits(self) -> dict[str, Any]:
        """What one request may send (reported by GET /v1/model, so clients can check before sending)."""
        names = ("max_body_bytes", "max_instances", "max_image_pixels", "max_audio_seconds", "max_text_chars")
        return {name: getattr(self, name) for name in names}

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        return cls(**json.loads(text))
