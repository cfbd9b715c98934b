"""polymodal: train, compare and ship fused multimodal models from a table.

The Python entry points: `MultimodalPredictor` (one model: fit, predict, evaluate, save, load), and the studies
and rewrites that work on models from above it: `compare`, `tune`, `compress`, `export`, and
`MultimodalRetriever`. Heavy dependencies (torch, lightning) load on first use, so `import polymodal` and
`polymodal --help` are fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from polymodal.version import __version__

if TYPE_CHECKING:
    from polymodal.optimize.compress import compress
    from polymodal.optimize.export import export_model as export
    from polymodal.predictor import MultimodalPredictor
    from polymodal.retrieval import MultimodalRetriever
    from polymodal.studies.compare import compare
    from polymodal.studies.tune import tune

# name -> the module that defines it (imported on first access)
_LAZY = {
    "MultimodalPredictor": "polymodal.predictor",
    "MultimodalRetriever": "polymodal.retrieval",
    "compare": "polymodal.studies.compare",
    "tune": "polymodal.studies.tune",
    "compress": "polymodal.optimize.compress",
    "export": "polymodal.optimize.export",  # export_model
}


_ATTR = {"export": "export_model"}  # the public name where it differs from the module's


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), _ATTR.get(name, name))
    raise AttributeError(f"module 'polymodal' has no attribute {name!r}")


__all__ = ["MultimodalPredictor", "MultimodalRetriever", "__version__", "compare", "compress", "export", "tune"]
