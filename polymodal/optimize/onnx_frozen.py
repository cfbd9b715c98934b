"""Frozen pretrained encoders in the ONNX graph: the encoder itself (its inputs in, what the feature pass caches
out), and its tokenizer / feature extractor saved beside the graph, so the runtime needs neither a feature cache
nor the encoder's own files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polymodal.data.schema import Modality


def frozen_backbone(p: dict[str, Any], modality: Modality, st: dict[str, Any]):
    """The frozen pretrained encoder of one input, giving what the feature pass caches (`FrozenExtractor`): its
    pooled embedding, or with `tokens` its token outputs, padding zeroed and rounded through fp16 as cached."""
    import torch
    from torch import nn

    from polymodal.encoders.pretrained import EncoderRef, build

    backbone = build(EncoderRef(**p["ref"]), modality, pad_id=st.get("pad_id", 0)).eval()
    if not p.get("tokens"):
        return backbone

    class FrozenTokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.pad_id = backbone, st.get("pad_id", 0)

        def forward(self, x):
            hidden = self.backbone(x, tokens=True)
            if modality is Modality.TEXT:
                real = x != self.pad_id
                real = torch.cat([torch.ones_like(real[:, :1]), real[:, 1:]], dim=1)  # the CLS token always
                hidden = hidden * real[..., None].to(hidden.dtype)
            return hidden.half().float()

    return FrozenTokens().eval()


def frozen_in_graph(engine: Any) -> list[str]:
    """The inputs whose frozen encoder is inside the graph."""
    return [n for n, p in engine.preprocessor.config.pretrained.items() if p["mode"] == "frozen"]


def save_tools(engine: Any, names: list[str], folder: Path) -> None:
    """The tokenizer / audio feature extractor of each frozen input in the graph, saved under `folder` (one
    subfolder per input, named like its graph input), so the runtime prepares the graph's inputs without the
    encoder's own files."""
    from transformers import AutoFeatureExtractor, AutoTokenizer

    keys = engine.net.keys
    for name in names:
        st = engine.preprocessor.state[name]
        if "tokenizer" in st:
            AutoTokenizer.from_pretrained(st["tokenizer"], local_files_only=True).save_pretrained(folder / keys[name])
        elif "extractor" in st:
            extractor = AutoFeatureExtractor.from_pretrained(st["extractor"], local_files_only=True)
            extractor.save_pretrained(folder / keys[name])
