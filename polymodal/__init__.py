"""polymodal: train, compare and ship fused multimodal models from a table.

Heavy dependencies (torch, lightning) load on first use, so `import polymodal` and `polymodal --help` are fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from polymodal.version import __version__

if TYPE_CHECKING:
    from polymodal.predictor import MultimodalPredictor


def __getattr__(name: str) -> Any:
    if name == "MultimodalPredictor":
        from polymodal.predictor import MultimodalPredictor

        return MultimodalPredictor
    raise AttributeError(f"module 'polymodal' has no attribute {name!r}")


__all__ = ["MultimodalPredictor", "__version__"]
