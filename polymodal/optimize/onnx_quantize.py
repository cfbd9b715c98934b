"""int8 of an exported ONNX graph: ONNX Runtime's quantizer on the network (dynamic, or static with activation
scales calibrated on training rows), then int8 storage of the weights it leaves in float."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.errors import UserError
from polymodal.optimize.onnx_graph import NET_SCOPE, set_metadata

QUANTIZE = ("dynamic", "static")
CALIBRATION_ROWS = 256


def quantize_onnx(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    mode: str = "dynamic",
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> Path:
    """int8 with ONNX Runtime: `dynamic` (weights int8, activations quantized on the fly: MatMul/Gemm/GRU/
    attention) or `static` (convolutions and matmuls with activation scales calibrated on `calibration`, a list
    of input feeds from training rows; the rest dynamic). The metadata travels with the graph."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, output = Path(source), Path(output)
    with tempfile.TemporaryDirectory(dir=output.parent) as tmpdir:
        pre = Path(tmpdir) / "pre.onnx"
        quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
        # Only the network goes int8. The in-graph preprocessing stays float: its DFT and mel products feed a
        # log, where int8 rounding of small powers turns into large errors in the features.
        keep_float = [n.name for n in onnx.load(str(pre)).graph.node if not n.name.startswith(f"/{NET_SCOPE}/")]
        out = Path(tmpdir) / "q.onnx"
        if mode == "dynamic":
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=True,
                             nodes_to_exclude=keep_float)  # fmt: skip
        elif mode == "static":
            if not calibration:
                raise UserError("static int8 needs calibration rows (a training table)")

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.it = iter(calibration)

                def get_next(self):
                    return next(self.it, None)

            mid = Path(tmpdir) / "s.onnx"
            # Convolutions get calibrated activation scales (static); the recurrent and matmul layers, whose
            # activations vary more per row, are then quantized dynamically.
            quantize_static(
                str(pre), str(mid), Reader(), op_types_to_quantize=["Conv"], per_channel=True,
                weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, nodes_to_exclude=keep_float,
            )  # fmt: skip
            quantize_dynamic(str(mid), str(out), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gemm", "GRU", "Attention", "LSTM"],
                             nodes_to_exclude=keep_float)  # fmt: skip
        else:
            raise UserError(f"unknown int8 mode {mode!r}; choose dynamic or static")
        proto = onnx.load(str(out))
        int8_weight_only(proto)
        meta = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
        meta["quantized"] = mode
        set_metadata(proto, meta)
        tmp = Path(tmpdir) / "final.onnx"
        onnx.save(proto, str(tmp))
        os.replace(tmp, output)
    return output.resolve()


def calibration_feeds(graph: Path, table: Any, rows: int = CALIBRATION_ROWS, batch: int = 32) -> list[dict]:
    """Graph input feeds of the first `rows` rows of a table (decoded by the inference engine), in batches."""
    from polymodal.predictor import MultimodalPredictor

    p = MultimodalPredictor.load(graph, runtime="onnx")
    df, base_dir = table
    features, _ = p.engine.features(df.iloc[:rows].reset_index(drop=True), base_dir, on_bad_rows="missing")
    net = p.engine.net
    starts = range(0, len(features), batch)
    return [net.feed(features.take(np.arange(s, min(s + batch, len(features))))) for s in starts]


def int8_weight_only(proto: Any, min_size: int = 1024) -> int:
    """Store what ONNX Runtime's quantizer leaves in float, the GRU weights (W, R) and embedding tables (Gather
    data), as int8 with one scale per output row, restored to float by a DequantizeLinear node: the file
    shrinks, the layer computes in float. Returns how many tensors were converted."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    targets: dict[str, int] = {}  # initializer -> axis of its output rows
    for node in proto.graph.node:
        if node.op_type == "GRU":
            for name in node.input[1:3]:
                targets[name] = 1  # (directions, 3 * hidden, in): a scale per gate row
        elif node.op_type == "Gather":
            targets[node.input[0]] = 0  # (vocab, dim): a scale per row
    done = 0
    new_nodes = []
    for name, axis in targets.items():
        t = inits.get(name)
        if t is None or t.data_type != onnx_float() or np.prod(t.dims) < min_size:
            continue
        w = numpy_helper.to_array(t)
        other = tuple(i for i in range(w.ndim) if i != axis)
        scale = np.maximum(np.abs(w).max(axis=other) / 127.0, 1e-12).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        proto.graph.initializer.remove(t)
        proto.graph.initializer.extend([
            numpy_helper.from_array(q, f"{name}_int8"), numpy_helper.from_array(scale, f"{name}_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero"),
        ])  # fmt: skip
        new_nodes.append(
            helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero"], [name], axis=axis)
        )
        done += 1
    for n in reversed(new_nodes):  # before every consumer: the graph stays topologically sorted
        proto.graph.node.insert(0, n)
    return done


def onnx_float() -> int:
    from onnx import TensorProto

    return TensorProto.FLOAT
