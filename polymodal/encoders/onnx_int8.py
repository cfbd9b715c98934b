"""Frozen pretrained encoders through ONNX Runtime in int8: the faster path of the feature pass.

The PyTorch encoder is exported to ONNX once (dynamic batch, and sequence length for text), its weights quantized
to int8 with ONNX Runtime's dynamic quantization (MatMul / Gemm / Conv), and the graph kept on disk beside the
feature cache (<cache root>/onnx/<encoder fingerprint>-<modality>-int8.onnx), so later runs only load it. Its
embeddings differ slightly from the fp32 ones, so the feature cache keeps them in their own namespace (see
`FrozenExtractor(runtime="onnx-int8")`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.data.schema import Modality

RUNTIMES = ("torch", "onnx-int8")


class OnnxInt8Encoder:
    def __init__(self, module: Any, fingerprint: str, modality: Modality, example: np.ndarray, root: Path):
        import onnxruntime as ort

        self.path = Path(root) / "onnx" / f"{fingerprint}-{modality.value}-int8.onnx"
        if not self.path.exists():
            export_int8(module, example, modality, self.path)
        options = ort.SessionOptions()
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0].astype(np.float32)


def export_int8(module: Any, example: np.ndarray, modality: Modality, path: Path) -> Path:
    """Export `module` (input: `example`'s dtype and shape, batch dynamic) and quantize it; written atomically."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {0: "batch", 1: "tokens"} if modality is Modality.TEXT else {0: "batch"}
    if modality is Modality.AUDIO:
        axes = {0: "batch", example.ndim - 1: "samples"}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        with torch.no_grad():
            torch.onnx.export(
                module.cpu().float().eval(), (torch.from_numpy(example),), str(fp32), dynamo=False, opset_version=17,
                input_names=["x"], output_names=["embedding"], dynamic_axes={"x": axes, "embedding": {0: "batch"}},
            )  # fmt: skip
        q = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(fp32), str(q), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=weight_matmuls(fp32))  # fmt: skip
        os.replace(q, path)
    return path


def weight_matmuls(path: Path) -> list[str]:
    """The MatMul/Gemm nodes that go int8: those that multiply by a weight (an initializer), except those fed by
    a GELU (its last op is a Mul in the export): the transformer FFN's second matmul, whose long-tailed inputs
    lose the most in int8 (MiniLM: min cosine to fp32 0.989 with it, 0.992 without). Products of two
    activations (attention scores) stay float too."""
    import onnx

    model = onnx.load(str(path))
    weights = {t.name for t in model.graph.initializer}
    weights |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Gemm") or not any(i in weights for i in n.input):
            continue
        if any(producer.get(i) in ("Mul", "Gelu", "FastGelu") for i in n.input if i not in weights):
            continue
        out.append(n.name)
    return out
