"""ONNX Runtime behind the inference engine: an exported graph (polymodal/optimize/export.py) in place of the
PyTorch network. Nothing here imports torch, so a server can run without it (`pip install polymodal[onnx]`
without torch; see the README)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.errors import UserError
from polymodal.preprocess import Features

GRAPH_FILE = "model.onnx"
TOOLS_SUFFIX = ".tools"  # beside a graph: the tokenizers / feature extractors of its frozen pretrained inputs


def find_graph(path: str | os.PathLike[str]) -> Path:
    """A .onnx file, or a folder holding model.onnx (e.g. a model folder exported into itself)."""
    path = Path(path)
    graph = path / GRAPH_FILE if path.is_dir() else path
    if not graph.is_file() or graph.suffix != ".onnx":
        raise FileNotFoundError(
            f"{path}: no ONNX graph there (want a .onnx file or a folder with {GRAPH_FILE}); make one with "
            f"`polymodal export MODEL --format onnx -o {GRAPH_FILE}`"
        )
    return graph


class OnnxNet:
    """Runs the graph on the engine's `Features` (the graph's raw inputs) and returns the task's outputs."""

    runtime = "onnx"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None):
        import onnxruntime as ort

        self.path = find_graph(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if "config" not in meta or "inputs" not in meta:
            raise UserError(f"{self.path} was not exported by polymodal (its metadata has no config)")
        self.metadata: dict[str, Any] = {
            k: json.loads(meta[k])
            for k in ("config", "preprocess", "metrics", "inputs", "frozen_in_graph", "text_in_graph", "text_decoder")
            if k in meta
        }
        self.text = None  # a text model: the memory graph plus a decoder-step graph (model/onnx_text.py)
        if "text_decoder" in self.metadata:
            from polymodal.model.onnx_text import OnnxTextDecoder

            self.text = OnnxTextDecoder(self.path, self.metadata["text_decoder"], options)
        self.quantized = meta.get("quantized")
        self.graph_names: dict[str, str] = self.metadata["inputs"]
        self.dtypes = {i.name: i.type for i in self.session.get_inputs()}

    def eval(self) -> OnnxNet:  # the engine calls net.eval() on any network
        return self

    def feed(self, features: Features) -> dict[str, np.ndarray]:
        out = {self.graph_names[n]: np.ascontiguousarray(features.inputs[n]) for n in features.input_names}
        out["present"] = np.ascontiguousarray(features.present)
        return out

    def run(self, features: Features) -> np.ndarray:
        if len(features) == 0:
            return np.zeros((0,), np.float32)
        if self.text is not None:
            return self.text.run(self.session, self.feed(features))
        return self.session.run(["output"], self.feed(features))[0]

    @property
    def generation(self) -> dict:
        """A text model's generation settings (beam size, length penalty, no-repeat n-gram, n-best)."""
        if self.text is None:
            raise AttributeError("generation")
        return self.text.generation

    @generation.setter
    def generation(self, value: dict) -> None:
        self.text.generation = dict(value)
