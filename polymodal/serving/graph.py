"""Serving a PyTorch model folder through its ONNX graph, exported when the server starts.

The exported graph (optimize/export.py) holds the network and most of the preprocessing: image scaling, the audio
features, the numeric standardization and the text tokenization run inside ONNX Runtime, where the PyTorch runtime
runs them as dozens of small numpy calls per request and the network as hundreds of PyTorch operations. On
serve_load.py's every-kind model a lone request after 100 ms idle took 4.3 ms inside the server with numpy
preprocessing and the network alone in ONNX Runtime, against 3.6 ms through the graph
(benchmarks/serve_stages.py). So `polymodal serve` on a model folder exports it to a temporary file, loads it as
`--runtime onnx` would, and keeps it only if it answers example requests (every input present, and some absent)
as the PyTorch model does; otherwise the server keeps PyTorch (model/fast.py). Only for models whose every input
has a scratch encoder and whose output is a class, classes or a number: a pretrained encoder would make the start
slow, and int8 folders and text outputs have their own paths.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
RTOL, ATOL = 1e-4, 1e-5  # the export's parity tolerance (tests/test_export.py); float32 STFT vs numpy's float64


def graph_eligible(service: Any) -> bool:
    """Whether the folder's model is one the graph serves (see the module's docstring) and ONNX Runtime exists."""
    engine = service.engine
    if engine.runtime != "torch" or not service.fast or service.videos or getattr(service.task, "is_text", False):
        return False
    if engine.preprocessor.config.pretrained or getattr(service.predictor, "compression_", None):
        return False
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _same(want: list[dict[str, Any]], got: list[dict[str, Any]]) -> bool:
    for a, b in zip(want, got, strict=True):
        if a["probabilities"] is not None:
            x, y = list(a["probabilities"].values()), list(b["probabilities"].values())
        else:
            x, y = [a["prediction"]], [b["prediction"]]
        if not np.allclose(np.array(x, dtype=float), np.array(y, dtype=float), rtol=RTOL, atol=ATOL, equal_nan=True):
            return False
    return True


def serve_graph(service: Any) -> bool:
    """Export `service`'s folder, swap its engine for the graph's if their answers agree; True when swapped.
    The graph's temporary folder is removed as soon as ONNX Runtime has read it (these models need no file beside
    the graph afterwards), so a server killed later leaves nothing behind."""
    from polymodal.optimize.export import export_onnx
    from polymodal.predictor import MultimodalPredictor

    if not graph_eligible(service):
        return False
    try:
        with tempfile.TemporaryDirectory(prefix="polymodal-serve-") as folder:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's notes are for whoever exports, not the server's log
                path = export_onnx(service.folder, Path(folder) / "model.onnx", predictor=service.predictor)
            graph = MultimodalPredictor._load_onnx(path, None, threads=service.threads or 1)
            service._graph_path = path  # where it was read from (gone after this block)
        full = service.example_row()
        cols = list(full)
        rows = [full, *({c: (v if i % 2 == k else None) for i, (c, v) in enumerate(full.items())} for k in (0, 1))]
        decoded = service.decode(rows)
        (want,) = service.run([decoded])
        torch_engine, service.engine = service.engine, graph.engine
        (got,) = service.run([decoded])
        if isinstance(want, Exception) or isinstance(got, Exception) or not _same(want, got):
            service.engine = torch_engine
            log.warning("the exported graph does not answer as the model does; serving it through PyTorch")
            return False
    except Exception:  # noqa: BLE001  (an input or layer the export does not take: PyTorch serves it)
        log.info("the model could not be served through its ONNX graph; serving it through PyTorch", exc_info=True)
        return False
    log.info("serving the model through its ONNX graph, exported at start", extra={"fields": {"columns": cols}})
    return True
