"""The PyTorch module that `export.py` traces into ONNX (the inputs' preprocessing, then the network, then the
task's output), the example inputs it is traced with, and the graph's metadata."""

from __future__ import annotations

from typing import Any

import numpy as np

from polymodal.data.schema import Modality
from polymodal.optimize.onnx_frozen import frozen_backbone
from polymodal.optimize.onnx_preprocess import audio_tables, preprocess_modules

NET_SCOPE = "net"  # GraphNet's attribute holding the network: its nodes are named /net/...; the rest is preprocessing


def _graph_net():
    """The class GraphNet (built on each call: torch is imported lazily)."""
    import torch
    from torch import nn

    class GraphNet(nn.Module):
        """Preprocessing modules -> the network -> the task's output."""

        def __init__(self, net, pre: dict[str, Any], names: list[str], task):
            super().__init__()
            self.net, self.names = net, names
            self.pre = nn.ModuleDict({net.keys[n]: pre[n] for n in names})
            self.classification, self.multilabel = task.is_classification, task.is_multilabel
            self.y_mean, self.y_std = float(task.y_mean), float(task.y_std)

        def forward(self, *args):
            *xs, present = args
            inputs = {n: self.pre[self.net.keys[n]](x) for n, x in zip(self.names, xs, strict=True)}
            logits = self.net(inputs, present)
            if self.multilabel:  # one independent probability per label, as Task.outputs
                return torch.sigmoid(logits.float())
            if self.classification:
                return torch.softmax(logits.float(), dim=-1)
            return logits.float().squeeze(-1) * self.y_std + self.y_mean

    return GraphNet


def graph_module(predictor: Any):
    """The PyTorch module that is exported: raw inputs in, task outputs out."""
    from torch import nn

    from polymodal.preprocess import CLIP_SIGMAS

    ImagePixels, AudioFeatures, NumericRaw = preprocess_modules()
    engine = predictor.engine
    pre_cfg, state = engine.preprocessor.config, engine.preprocessor.state
    pre: dict[str, Any] = {}
    for name, modality in engine.schema.inputs.items():
        st = state[name]
        if name in pre_cfg.pretrained:
            p = pre_cfg.pretrained[name]
            # A frozen encoder goes into the graph (its inputs in, the pooled embedding out); a fine-tuned one
            # is part of the network already.
            pre[name] = frozen_backbone(p, modality, st) if p["mode"] == "frozen" else nn.Identity()
        elif modality is Modality.IMAGE:
            pre[name] = ImagePixels(st["mean"], st["std"])
        elif modality is Modality.AUDIO:
            tables = audio_tables(pre_cfg.sample_rate, pre_cfg.n_mels, pre_cfg.n_mfcc, st["n_samples"])
            pre[name] = AudioFeatures(tables, st["mean"], st["std"], pre_cfg.audio_norm == "utterance")
        elif modality is Modality.NUMERIC:
            pre[name] = NumericRaw(st["mean"], st["std"], CLIP_SIGMAS)
        else:
            pre[name] = nn.Identity()
    net = getattr(predictor, "_float_net", None) or engine.net  # an int8 folder: its weights before PyTorch int8
    return _graph_net()(net, pre, list(engine.schema.inputs), engine.task).eval()


def example_inputs(engine: Any, rows: int = 2):
    """Graph inputs of `rows` rows with every input present (zeros / first ids), for tracing the export."""
    from polymodal.preprocess import Features

    cfg, st = engine.preprocessor.config, engine.preprocessor.state
    inputs: dict[str, np.ndarray] = {}
    for name, modality in engine.schema.inputs.items():
        s = st[name]
        p = cfg.pretrained.get(name)
        if p:  # the pretrained encoder's own inputs (a frozen one is inside the graph too)
            inputs[name] = (
                engine.preprocessor._pretrained(modality, [None] * rows, s)[0]
                if modality in (Modality.IMAGE, Modality.AUDIO)
                else engine.preprocessor._pretrained(modality, ["a"] * rows, s)[0]
            )
        elif modality is Modality.TEXT:
            inputs[name] = np.full((rows, s["max_len"]), 2 if s["vocab"] else 1, np.int64)
        elif modality is Modality.IMAGE:
            inputs[name] = np.full((rows, 3, cfg.image_size, cfg.image_size), 128, np.uint8)
        elif modality is Modality.AUDIO:
            inputs[name] = np.zeros((rows, s["n_samples"]), np.float32)
        elif modality is Modality.VIDEO:  # decoded uint8 frames: the video encoder standardizes them in the graph
            inputs[name] = np.full((rows, cfg.video_frames, 3, cfg.image_size, cfg.image_size), 128, np.uint8)
        elif modality is Modality.NUMERIC:
            inputs[name] = np.zeros((rows, len(s["columns"])), np.float64)
        else:
            inputs[name] = np.full((rows, len(s["columns"])), 2, np.int64)
    names = list(engine.schema.inputs)
    return Features(inputs, np.ones((rows, len(names)), bool), names)


def set_metadata(proto: Any, meta: dict[str, str]) -> None:
    """Replace the graph's metadata with `meta` (where the runtime reads the schema, preprocessing, task...)."""
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
