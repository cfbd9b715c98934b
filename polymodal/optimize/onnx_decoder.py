"""ONNX export of a text model: two graphs.

- The main graph (`<output>.onnx`): raw inputs (as for every model, see export.py) -> `memory` (batch, tokens,
  width), `memory_mask` (batch, tokens): the fused inputs as the decoder step reads them (the transformer's
  `step_memory`: its cross-attention keys and values, computed once), and the decoder's first `cache`. For a CTC
  head it gives `frames` instead: per-frame log-probabilities (batch, frames, vocab), decoded best-path by the runtime.
- The decoder-step graph (`<output>.decoder.onnx`): `prefix` (hypotheses, t) int64 token ids so far, `memory`,
  `memory_mask`, `cache` -> `log_probs` (hypotheses, vocab) of the next token and the new `cache`.
ONNX Runtime then generates with the same numpy beam search as PyTorch (`polymodal.tasks.beam`), greedy or beam,
so both give the same strings (tested). The step graph is found beside the main one by name; the main graph's
metadata `text_decoder` holds the generation settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DECODER_SUFFIX = ".decoder.onnx"


def memory_module(graph: Any):
    """The module traced for a text model: `graph`'s preprocessing -> the network's memory (or CTC frames)."""
    import torch
    from torch import nn

    if hasattr(graph.net.head, "save_files"):  # polymodal/tasks/hf_decoder.py
        from polymodal.errors import UserError

        raise UserError(
            "a model with a pretrained Hugging Face decoder (decoder.pretrained) is not exported to ONNX: "
            "its model folder is what runs it (polymodal predict / serve with the PyTorch runtime)"
        )

    class MemoryGraph(nn.Module):
        def __init__(self, graph: Any):
            super().__init__()
            self.net, self.pre, self.names = graph.net, graph.pre, graph.names

        def forward(self, *args):
            *xs, present = args
            inputs = {n: self.pre[self.net.keys[n]](x) for n, x in zip(self.names, xs, strict=True)}
            memory, mask, spans = self.net.memory(inputs, present)
            if self.net.ctc_input is not None:
                frames = self.net.head.frames(memory, mask, *spans[self.net.ctc_input])
                return torch.log_softmax(frames.float(), dim=-1)
            read = getattr(self.net.head, "step_memory", None)
            return (read(memory) if read else memory), mask, self.net.head.init_cache(memory, mask)

    return MemoryGraph(graph).eval()


def output_names(net: Any) -> list[str]:
    return ["frames"] if net.ctc_input is not None else ["memory", "memory_mask", "cache"]


def dynamic_axes(net: Any) -> dict[str, dict[int, str]]:
    if net.ctc_input is not None:
        return {"frames": {0: "batch", 1: "frames"}}
    return {"memory": {0: "batch", 1: "tokens"}, "memory_mask": {0: "batch", 1: "tokens"}, "cache": {0: "batch"}}


def export_decoder_step(net: Any, path: Path, opset: int) -> dict[str, Any]:
    """Write the decoder-step graph of `net` (a TextNet) to `path`; returns the metadata the runtime needs."""
    import torch
    from torch import nn

    record: dict[str, Any] = {"max_len": net.max_len, "generation": dict(net.generation),
                              "ctc": net.ctc_input is not None}  # fmt: skip
    if record["ctc"]:
        return record  # nothing to step: the main graph gives the frames

    class Step(nn.Module):
        def __init__(self, head: nn.Module):
            super().__init__()
            self.head = head

        def forward(self, prefix, memory, mask, cache):
            logits, cache = self.head.step(prefix, memory, mask, cache)
            return torch.log_softmax(logits.float(), dim=-1), cache

    step = Step(net.head).eval()
    b, n = 2, 3
    memory = torch.zeros(b, n, net.dim)
    mask = torch.ones(b, n, dtype=torch.bool)
    cache = net.head.init_cache(memory, mask)
    # A cache that grows with the steps (the transformer's keys and values of the tokens so far) starts empty:
    # traced at the second step, holding the first token's, with its length dynamic.
    grows = cache.shape[1] == 0
    if grows:
        cache = cache.new_zeros(b, 1, cache.shape[2])
    read = getattr(net.head, "step_memory", None)
    memory = read(memory) if read else memory  # what the step reads
    prefix = torch.ones(b, 2, dtype=torch.long)
    cache_axes = {0: "rows", 1: "past"} if grows else {0: "rows"}
    torch.onnx.export(
        step, (prefix, memory, mask, cache), str(path), dynamo=False, opset_version=opset,
        input_names=["prefix", "memory", "memory_mask", "cache"], output_names=["log_probs", "cache_out"],
        dynamic_axes={"prefix": {0: "rows", 1: "steps"}, "memory": {0: "rows", 1: "tokens"},
                      "memory_mask": {0: "rows", 1: "tokens"}, "cache": cache_axes, "log_probs": {0: "rows"},
                      "cache_out": {0: "rows", 1: "steps"} if grows else {0: "rows"}},
    )  # fmt: skip
    record["cache_shape"] = [0 if grows else cache.shape[1], *cache.shape[2:]]
    return record


def metadata(record: dict[str, Any]) -> str:
    return json.dumps(record)
