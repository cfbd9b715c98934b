"""A faster forward pass for serving with the PyTorch runtime: fewer, bigger operations per request.

A lone request's forward pass is hundreds of small operations, and on a busy or just-idle machine each costs far
more than its arithmetic, so the time goes to Python and per-call overhead. `accelerate` builds, from a trained
`MultimodalNet` in eval mode, a forward pass with the same outputs (within float rounding):

- `fold_for_inference`: a copy with each BatchNorm after a convolution folded into the convolution's weights,
  dropout (an identity in eval mode) removed, and the convolution weights of the channels-last CNN blocks stored
  channels-last (otherwise each call converts them);
- `trace_for_inference`: that copy traced and frozen by TorchScript (no Python per module, constants inlined). The
  trace records one path through the code, so it is used only for networks built from known modules, and only
  after it gave the eager network's outputs on check batches of several sizes with inputs present and absent;
- `onnx_for_inference` (model/fast_onnx.py): that copy exported in memory and run by ONNX Runtime, checked the
  same way, where onnxruntime is installed: a recurrent layer is one kernel there, not a dozen operations per
  step (serve_load.py's model: 1.1 ms instead of 1.8 ms per lone request back to back, 2.2 instead of 3.7 after
  100 ms idle; nothing is written to disk).

TorchScript is deprecated in PyTorch 2.x (`torch.jit.trace` and `torch.jit.freeze` warn) but still works in 2.13.
`torch.compile` (inductor, freezing, RNNs allowed) was measured on serve_load.py's model instead: no faster than the
trace at batch 1, and 40-60 s of compilation at start and again for each new batch size the micro-batcher makes.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# Modules whose forward has no Python branch on values (only on shapes and settings), so a trace of one batch is
# the forward of every batch; anything else (pretrained models, quantized modules) stays eager. A fusion's code is
# checked by the check batches instead (present and absent inputs, several batch sizes).
TRACEABLE_PREFIXES = (
    "torch.nn.modules.",
    "polymodal.encoders.scratch",
    "polymodal.encoders.tokens",
    "polymodal.fusion.",
    "polymodal.model.network",
    "polymodal.tasks.",
)
# In eval mode these pick a fast path from the values of the padding mask (nested tensors): a trace would keep one.
UNTRACEABLE = (nn.TransformerEncoder, nn.TransformerEncoderLayer, nn.MultiheadAttention)
RTOL, ATOL = 1e-4, 1e-5


def _fold_sequential(seq: nn.Sequential) -> nn.Sequential:
    """Conv2d -> BatchNorm2d pairs as one Conv2d; dropout layers left out."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    mods, out, i = list(seq), [], 0
    while i < len(mods):
        m = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d) and nxt.running_mean is not None:
            out.append(fuse_conv_bn_eval(m, nxt))
            i += 2
            continue
        if not isinstance(m, nn.Dropout):
            out.append(m)
        i += 1
    return nn.Sequential(*out)


def _fold_children(module: nn.Module) -> None:
    """Fold every Sequential below `module`, innermost first (a conv block inside a CNN's Sequential)."""
    for name, child in list(module.named_children()):
        _fold_children(child)
        if isinstance(child, nn.Sequential):
            module._modules[name] = _fold_sequential(child)  # works inside a Sequential too
        elif isinstance(child, nn.Dropout):
            module._modules[name] = nn.Identity()


def fold_for_inference(net: nn.Module) -> nn.Module:
    """A copy of `net` (eval mode) for inference only: same outputs within float rounding, fewer operations."""
    from polymodal.encoders.scratch import AudioCNN, ImageCNN

    net = copy.deepcopy(net).eval()
    _fold_children(net)
    for module in net.modules():
        if isinstance(module, ImageCNN | AudioCNN):  # their blocks run channels-last (`run_channels_last`)
            for conv in module.features.modules():
                if isinstance(conv, nn.Conv2d) and conv.in_channels > 1:  # a 1-channel map stays as it is
                    conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def traceable(net: nn.Module) -> bool:
    """Whether every module of `net` is of a kind a trace can stand for (see TRACEABLE_PREFIXES)."""
    from polymodal.model.network import MultimodalNet

    if type(net) is not MultimodalNet:
        return False
    return all(
        type(m).__module__.startswith(TRACEABLE_PREFIXES) and not isinstance(m, UNTRACEABLE) for m in net.modules()
    )


Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


def same_outputs(a: Any, b: Any) -> bool:
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and bool(torch.allclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True))
    )


def trace_for_inference(net: nn.Module, checks: list[Batch]) -> nn.Module | None:
    """`net` (already folded) traced on the first check batch and frozen; None when a check batch's outputs
    differ from the eager network's, or tracing fails."""
    inputs, present = checks[0]
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation, and shape checks read as constants (they are)
            traced = torch.jit.freeze(torch.jit.trace(net, (inputs, present), strict=False, check_trace=False))
            ok = all(same_outputs(run_traced(traced, *c), net(*c)) for c in checks)
    except Exception:  # a module TorchScript cannot trace: the eager network it is
        log.warning("the network could not be traced; serving it eagerly", exc_info=True)
        return None
    if not ok:
        log.warning("the traced network's outputs differ from the network's; serving it eagerly")
        return None
    return traced


def run_traced(traced: nn.Module, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
    """Run the frozen graph as it is: it is already optimized, and TorchScript's profiling executor would
    otherwise re-optimize it for each new batch size it meets (tens of ms, on a live request)."""
    with torch.jit.optimized_execution(False):
        return traced(inputs, present)


class FastForward:
    """The index-free forward of a network: through ONNX Runtime when it is installed and gives the network's
    outputs (model/fast_onnx.py), else through its trace when there is one, else its folded copy. `executor`
    names which."""

    def __init__(self, net: nn.Module, traced: nn.Module | None, onnx: Any = None):
        self.net, self.traced, self.onnx = net, traced, onnx
        self.executor = "onnx-network" if onnx is not None else "torchscript" if traced is not None else "pytorch"

    def torch_forward(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        if self.traced is not None:
            return run_traced(self.traced, inputs, present)
        return self.net(inputs, present)

    def __call__(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        if self.onnx is not None:
            return self.onnx(inputs, present)
        return self.torch_forward(inputs, present)


def accelerate(
    net: nn.Module, checks: list[Batch], onnx: bool = True, onnx_threads: int | None = None
) -> FastForward | None:
    """A `FastForward` for `net` whose outputs equal the network's on `checks`; None where none is known.
    `onnx`: try ONNX Runtime first (model/fast_onnx.py), with `onnx_threads` threads (default: torch's)."""
    if not checks or not traceable(net):
        return None
    with torch.inference_mode():
        reference = [net(*c) for c in checks]
        folded = fold_for_inference(net)
        if not all(same_outputs(folded(*c), r) for c, r in zip(checks, reference, strict=True)):
            log.warning("folding changed the network's outputs; serving it as it is")
            return None
    fast = FastForward(folded, trace_for_inference(folded, checks))
    if onnx:
        from polymodal.model.fast_onnx import onnx_for_inference

        runner = onnx_for_inference(folded, checks, fast.torch_forward, same_outputs, onnx_threads)
        if runner is not None:
            fast.onnx, fast.executor = runner, "onnx-network"
    return fast
