"""A model folder (or an exported ONNX graph) back to a working inference engine: the network its config
describes, its weights (int8 ones rebuilt), its preprocessing, and its pretrained encoders found on this machine.
`MultimodalPredictor.load` wraps this; so can anything that only needs to run a saved model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polymodal.config import Config, from_legacy
from polymodal.data.schema import Schema
from polymodal.errors import UserError
from polymodal.preprocess import Preprocessor


@dataclass
class LoadedModel:
    config: Config
    schema: Schema
    engine: Any
    metrics: dict[str, Any]
    input_specs: dict[str, dict]
    compression: dict[str, Any] | None
    float_net: Any = None  # an int8 folder's network before dynamic quantization
    graph_config: dict[str, Any] | None = None  # an ONNX graph's config.json record


def _tree(config: dict[str, Any], preprocess: dict[str, Any], cache_dir: str | os.PathLike[str] | None) -> Config:
    if "config" in config:
        tree = Config.from_dict(config["config"])
    else:  # a folder written before the config tree (polymodal 0.1.0)
        tree = from_legacy(config, preprocess["config"])
    # The feature cache is a place on this machine, not part of the model.
    tree.encoders.cache_dir = None if cache_dir is None else str(cache_dir)
    return tree


def build_net(
    cfg: Config, schema: Schema, input_specs: dict[str, dict], task: Any, init: bool = False, state: dict | None = None
) -> Any:
    """The network a config describes, for a fitted schema and preprocessing. `init`: a new fit's network, whose
    encoders start from `encoders.init_from` (polymodal/model/init_from.py), matched to the vocabularies of its
    fitted preprocessing `state`, and whose `encoders.readout` inputs read their text models
    (polymodal/model/readout.py): their descriptions are then in `net.resolved_specs`."""
    from polymodal.model.network import MultimodalNet

    dims = {name: cfg.encoders.dim(m.value) for name, m in schema.inputs.items()}
    readout_weights: dict[str, Any] = {}
    if init and cfg.encoders.readout:  # the text models' descriptions go into the specs (and the saved config)
        from polymodal.model.readout import readout_specs

        input_specs, readout_weights = readout_specs(cfg, schema, input_specs)
    resolved = input_specs
    video = cfg.encoders.video  # the temporal model of video frames is an encoder setting, not a fitted size
    input_specs = {n: s | ({"temporal": video.temporal, "layers": video.layers, "heads": video.heads}
                           if schema.inputs[n].value == "video" else {}) for n, s in input_specs.items()}  # fmt: skip
    given = {n: build_readout(s["readout"], s.get("temporal")) for n, s in input_specs.items() if "readout" in s}
    if getattr(task, "is_text", False):  # a decoder in place of the head (polymodal/model/text_net.py)
        from polymodal.model.text_net import TextNet

        net = TextNet(schema.inputs, input_specs, task, cfg.decoder, cfg.fusion.name, dims, cfg.fusion.hidden,
                      cfg.fusion.dropout, fusion_options=cfg.fusion.options, encoders=given)  # fmt: skip
    else:
        net = MultimodalNet(
            schema.inputs, input_specs, task, cfg.fusion.name, dims, cfg.fusion.hidden, cfg.fusion.dropout,
            fusion_options=cfg.fusion.options, encoders=given,
        )  # fmt: skip
    if init and cfg.encoders.init_from:
        from polymodal.model.init_from import init_encoders

        init_encoders(net, cfg, state)
    for name, weights in readout_weights.items():
        net.encoders[net.keys[name]].net.load_state_dict(weights, strict=True)
    if readout_weights:
        net.resolved_specs = resolved  # what the model folder must record to rebuild the readouts
    return net


def build_readout(described: dict[str, Any], temporal: str | None = None) -> Any:
    """The encoder of an `encoders.readout` input: its text model's network, built from the description the model
    folder records (polymodal/model/readout.py); the weights come with the folder's own, or from `readout_specs`."""
    from polymodal.model.readout import Readout
    from polymodal.tasks import Task

    task = Task.from_dict(described["task"])
    inner = build_net(Config.from_dict(described["config"]), Schema.from_dict(described["schema"]),
                      described["input_specs"], task)  # fmt: skip
    return Readout(inner, task.vocabulary.tokens, int(described["steps"]), described["words"], temporal)


def load_model(
    folder: str | os.PathLike[str], device: str = "cpu", cache_dir: str | os.PathLike[str] | None = None
) -> LoadedModel:
    """The PyTorch model of a model folder, ready to predict."""
    from polymodal.model.artifact import load_folder
    from polymodal.model.inference import InferenceEngine
    from polymodal.model.pipeline import relink_encoders
    from polymodal.tasks import Task

    config, state, preprocess, metrics = load_folder(Path(folder))
    if config.get("kind") == "aligned":
        raise UserError(
            f"{folder} is an aligned retrieval model: use MultimodalRetriever.load, polymodal index/search/evaluate"
        )
    quantized = bool(config.get("compression", {}).get("quantize"))
    if quantized:
        from polymodal.model.quantized import restore_state

        state = restore_state(state)  # int8 weights stored as plain tensors -> float weights
    schema = Schema.from_dict(config["schema"])
    tree = _tree(config, preprocess, cache_dir)
    preprocessor = Preprocessor.from_dict(schema, preprocess)
    specs = relink_encoders(Path(folder), preprocessor, config["input_specs"])
    task = Task.from_dict(config["task"])
    if hasattr(getattr(task, "vocabulary", None), "relink"):  # a pretrained decoder: its files in the folder
        task.vocabulary.relink(Path(folder))
    net = build_net(tree, schema, specs, task)
    net.load_state_dict(state, strict=True)
    float_net = None
    if quantized:
        from polymodal.model.quantized import quantize_modules

        float_net = net
        net = quantize_modules(net.eval())  # int8 Linear/GRU computed as int8 (dynamic quantization)
    cache = None if tree.encoders.cache_dir is None else Path(tree.encoders.cache_dir)
    engine = InferenceEngine(schema, preprocessor, task, net.to(device), cache_dir=cache)
    return LoadedModel(tree, schema, engine, metrics, config["input_specs"], config.get("compression"), float_net)


def load_onnx_model(
    path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None, threads: int | None = None
) -> LoadedModel:
    """An exported ONNX graph run by ONNX Runtime (`threads` intra-op threads, default: its own choice), without
    torch."""
    from polymodal.model.inference import InferenceEngine
    from polymodal.model.onnx_runtime import TOOLS_SUFFIX, OnnxNet
    from polymodal.tasks import Task

    net = OnnxNet(path, threads=threads)
    config, preprocess = net.metadata["config"], net.metadata["preprocess"]
    schema = Schema.from_dict(config["schema"])
    tree = _tree(config, preprocess, cache_dir)
    preprocessor = Preprocessor.from_dict(schema, preprocess)
    tools = net.path.with_suffix(TOOLS_SUFFIX)
    preprocessor.text_in_graph = frozenset(net.metadata.get("text_in_graph", []))  # older graphs took token ids
    # Frozen encoders inside the graph (older graphs took their embeddings, from the feature cache, instead).
    for name in net.metadata.get("frozen_in_graph", []):
        preprocessor.config.pretrained[name]["in_graph"] = True
        folder = tools / net.graph_names[name]
        for tool in ("tokenizer", "extractor"):
            if tool in preprocessor.state[name] and folder.is_dir():
                preprocessor.state[name][tool] = str(folder)
    if preprocessor.config.pretrained:  # encoders outside the graph: find them on this machine
        from polymodal.model.pipeline import relink_encoders

        relink_encoders(Path(net.path).parent, preprocessor, config["input_specs"])
    cache = None if tree.encoders.cache_dir is None else Path(tree.encoders.cache_dir)
    engine = InferenceEngine(schema, preprocessor, Task.from_dict(config["task"]), net, cache_dir=cache)
    metrics = net.metadata.get("metrics", {})
    return LoadedModel(tree, schema, engine, metrics, config["input_specs"], config.get("compression"),
                       graph_config=config)  # fmt: skip
