"""The served network's forward pass run by ONNX Runtime, exported in memory from the PyTorch network.

At batch 1 a small network is hundreds of tiny operations; PyTorch pays its per-operation overhead on each (a
bidirectional GRU over three steps costs ~0.2 ms on this project's 2-core VM, almost all of it dispatch), while
ONNX Runtime runs a recurrent layer as one kernel and fuses much of the rest. `onnx_for_inference` exports the
folded network (model/fast.py) to an ONNX graph held in memory, opens it in ONNX Runtime and keeps it only if it
gives the PyTorch network's outputs on the check batches (several sizes, inputs present and absent), as the trace
is checked. The network's inputs are the same as PyTorch's (the preprocessing stays in numpy), so nothing else in
the server changes. It needs the `onnx` extra (onnx, onnxruntime); without it, or when the export or the check
fails, the server keeps the TorchScript trace. A batch the graph refuses (a shape the check did not meet) runs
through the fallback instead, once logged.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


class _Positional(nn.Module):
    """The network with positional inputs (ONNX inputs are a flat list; the network takes a dict)."""

    def __init__(self, net: nn.Module, names: list[str]):
        super().__init__()
        self.net, self.names = net, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        *inputs, present = tensors
        return self.net(dict(zip(self.names, inputs, strict=True)), present)


class OnnxForward:
    """`(inputs, present) -> logits` through an ONNX Runtime session; `fallback` for a batch the graph refuses."""

    def __init__(self, session: Any, names: list[str], fallback: Any):
        self.session, self.names, self.fallback = session, names, fallback
        self._feeds = [f"x{i}" for i in range(len(names))]
        self._warned = False

    def __call__(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        feed = {f: inputs[n].numpy() for f, n in zip(self._feeds, self.names, strict=True)}
        feed["present"] = present.numpy()
        try:
            (out,) = self.session.run(None, feed)
        except Exception:  # noqa: BLE001  (a shape no check batch had: serve it the other way, say so once)
            if not self._warned:
                log.warning("ONNX Runtime refused a batch; such batches run through PyTorch", exc_info=True)
                self._warned = True
            return self.fallback(inputs, present)
        return torch.from_numpy(out)


def _export(net: nn.Module, example: Batch) -> tuple[bytes, list[str]]:
    inputs, present = example
    names = list(inputs)
    feeds = [f"x{i}" for i in range(len(names))]
    # Batch size varies; so does the length of token ids (integer tensors of rank 2: a request's longest text).
    axes: dict[str, dict[int, str]] = {"present": {0: "batch"}, "output": {0: "batch"}}
    for f, n in zip(feeds, names, strict=True):
        t = inputs[n]
        axes[f] = {0: "batch", 1: f"{f}_len"} if t.dim() == 2 and not t.is_floating_point() else {0: "batch"}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer warnings
        torch.onnx.export(
            _Positional(net, names), (*[inputs[n] for n in names], present), buffer, dynamo=False,
            opset_version=17, input_names=[*feeds, "present"], output_names=["output"], dynamic_axes=axes,
        )  # fmt: skip
    return buffer.getvalue(), names


def onnx_for_inference(
    net: nn.Module, checks: list[Batch], fallback: Any, same: Callable[[Any, Any], bool], threads: int | None = None
) -> OnnxForward | None:
    """An `OnnxForward` of `net` (folded, eval mode) whose outputs are `same` as `fallback`'s on every check batch;
    None without onnxruntime, or when the export or a check fails."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    try:
        graph, names = _export(net, checks[0])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        if options.intra_op_num_threads > 1:  # its pool would spin between requests, on cores the server shares
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # its warnings about unused initializers are not the user's
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        forward = OnnxForward(session, names, fallback)
        with torch.inference_mode():
            for inputs, present in checks:
                feed = {f"x{i}": inputs[n].numpy() for i, n in enumerate(names)} | {"present": present.numpy()}
                (out,) = session.run(None, feed)
                if not same(torch.from_numpy(np.asarray(out)), fallback(inputs, present)):
                    log.warning("the ONNX Runtime graph's outputs differ from the network's; not using it")
                    return None
    except Exception:  # noqa: BLE001  (an operator the exporter or ONNX Runtime lacks: the trace serves it)
        log.info("the network could not run in ONNX Runtime; serving it through PyTorch", exc_info=True)
        return None
    return forward
