"""Export a model folder to one ONNX graph with the preprocessing inside, checked against PyTorch by the tests.

The graph's inputs (see `Preprocessor.graph_inputs`), one per fusion input, plus `present` (bool, batch x inputs):
- image (scratch): uint8 pixels (batch, 3, S, S) as decoded and resized by `decode_image` (the size S is fixed:
  resizing stays in the decoder, PIL's bilinear filter, so the graph sees exactly the pixels PyTorch sees);
  the graph scales to [0, 1] and normalizes with the fitted mean/std;
- audio (scratch): the waveform (batch, n_samples) float32 at the model's sample rate, zero-padded or cut to
  the fitted length; the graph computes the STFT (the ONNX STFT operator with the Hann window), the
  mel filterbank, dB below each clip's peak, the MFCC (DCT-II) and the standardization, as librosa does;
- numeric: the raw numbers (batch, columns) float64, NaN where missing; the graph standardizes, imputes 0 and
  appends the missing flags;
- categorical: category ids (batch, columns) int64 from the vocabularies in the metadata (looked up in Python);
- text (scratch): the strings (batch,); the graph lower-cases, tokenizes (ONNX Runtime's Tokenizer, RE2), looks the
  tokens up and pads them (`tokenize_in_graph`); the rule (lower-case, regex `\\w+|[^\\w\\s]`, id = 2 + rank in
  the vocabulary, 1 = unknown, 0 = padding) and the vocabulary are also written beside the graph as JSON;
- pretrained, frozen or fine-tuned: the tokenizer's / image processor's / feature extractor's output, the
  encoder inside the graph (a frozen one with its pooling); the tokenizers and feature extractors of the frozen
  inputs are saved beside the graph (<output>.tools/<graph input>/): no feature cache, no encoder files needed;
The output is the task's output: class probabilities, or the prediction in the label's units.
Everything a runtime needs (schema, preprocessing state, task, metrics) is in the graph's metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.version import __version__
from polymodal.data.schema import Modality
from polymodal.errors import UserError

FORMATS = ("onnx",)
OPSET = 17
META_KEYS = ("polymodal_version", "config", "preprocess", "metrics", "inputs", "classes", "columns", "source")


def _torch():
    import torch
    from torch import nn

    return torch, nn


def audio_tables(sample_rate: int, n_mels: int, n_mfcc: int, n_samples: int) -> dict[str, np.ndarray]:
    """The STFT settings and constant tables of the audio features, as `log_mel_mfcc` computes them with librosa."""
    import librosa
    import scipy.fftpack

    n_fft = 1 << int(np.ceil(np.log2(sample_rate * 0.025)))
    return {
        "hop": np.array(sample_rate // 100),
        "n_fft": np.array(n_fft),
        "window": librosa.filters.get_window("hann", n_fft, fftbins=True).astype(np.float32),
        "mel": librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).T.astype(np.float32),
        "dct": scipy.fftpack.dct(np.eye(n_mels), type=2, norm="ortho", axis=0)[:n_mfcc].astype(np.float32),
        "pad": np.array(n_fft // 2),
    }


def _modules():
    """The graph's preprocessing modules (built on first use: torch is imported lazily)."""
    torch, nn = _torch()

    class ImagePixels(nn.Module):
        def __init__(self, mean: list[float], std: list[float]):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[:, None, None])
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[:, None, None])

        def forward(self, x):
            return (x.to(torch.float32) / 255.0 - self.mean) / self.std

    class AudioFeatures(nn.Module):
        def __init__(self, tables: dict[str, np.ndarray], mean: list[float], std: list[float]):
            super().__init__()
            for k in ("window", "mel", "dct"):
                self.register_buffer(k, torch.from_numpy(tables[k]))
            self.pad, self.hop, self.n_fft = int(tables["pad"]), int(tables["hop"]), int(tables["n_fft"])
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[:, None])
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[:, None])

        def forward(self, wave):
            padded = torch.nn.functional.pad(wave, (self.pad, self.pad))  # librosa: center=True, zeros
            # The ONNX STFT operator (real and imaginary parts last: ONNX has no complex tensors), so the graph
            # holds the window, not a DFT table.
            spec = torch.stft(padded, self.n_fft, hop_length=self.hop, win_length=self.n_fft, window=self.window,
                              center=False, onesided=True, return_complex=False)  # fmt: skip
            power = (spec**2).sum(-1).transpose(1, 2)  # (b, n_frames, n_freq)
            mel = (power @ self.mel).transpose(1, 2)  # (b, n_mels, n_frames)
            peak = torch.clamp(mel.amax(dim=(1, 2), keepdim=True), min=1e-10)
            log_mel = torch.clamp(10.0 * torch.log10(torch.clamp(mel, min=1e-10) / peak), min=-80.0)
            feats = torch.cat([log_mel, self.dct @ log_mel], dim=1)
            return (feats - self.mean) / self.std

    class NumericRaw(nn.Module):
        def __init__(self, mean: list[float], std: list[float], clip: float):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float64))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float64))
            self.clip = clip

        def forward(self, x):
            missing = torch.isnan(x)
            z = torch.where(missing, torch.zeros_like(x), (x - self.mean) / self.std)
            z = torch.clamp(z, -self.clip, self.clip)
            return torch.cat([z, missing.to(torch.float64)], dim=1).to(torch.float32)

    class GraphNet(nn.Module):
        """Preprocessing modules -> the network -> the task's output."""

        def __init__(self, net, pre: dict[str, Any], names: list[str], task):
            super().__init__()
            self.net, self.names = net, names
            self.pre = nn.ModuleDict({net.keys[n]: pre[n] for n in names})
            self.classification = task.is_classification
            self.y_mean, self.y_std = float(task.y_mean), float(task.y_std)

        def forward(self, *args):
            *xs, present = args
            inputs = {n: self.pre[self.net.keys[n]](x) for n, x in zip(self.names, xs, strict=True)}
            logits = self.net(inputs, present)
            if self.classification:
                return torch.softmax(logits.float(), dim=-1)
            return logits.float().squeeze(-1) * self.y_std + self.y_mean

    return ImagePixels, AudioFeatures, NumericRaw, GraphNet


NET_SCOPE = "net"  # GraphNet's attribute holding the network: its nodes are named /net/...; the rest is preprocessing


def graph_module(predictor: Any):
    """The PyTorch module that is exported: raw inputs in, task outputs out."""
    from polymodal.preprocess import CLIP_SIGMAS

    _, nn = _torch()
    ImagePixels, AudioFeatures, NumericRaw, GraphNet = _modules()
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
            pre[name] = AudioFeatures(tables, st["mean"], st["std"])
        elif modality is Modality.NUMERIC:
            pre[name] = NumericRaw(st["mean"], st["std"], CLIP_SIGMAS)
        else:
            pre[name] = nn.Identity()
    net = getattr(predictor, "_float_net", None) or engine.net  # an int8 folder: its weights before PyTorch int8
    return GraphNet(net, pre, list(engine.schema.inputs), engine.task).eval()


def frozen_backbone(p: dict[str, Any], modality: Modality, st: dict[str, Any]):
    """The frozen pretrained encoder of one input, giving what the feature pass caches (`FrozenExtractor`): its
    pooled embedding, or with `tokens` its token outputs, padding zeroed and rounded through fp16 as cached."""
    from polymodal.encoders.pretrained import EncoderRef, build

    torch, nn = _torch()
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


# The tokenization of `polymodal.preprocess.tokenize` in RE2 (ONNX Runtime's Tokenizer): Python's Unicode \w is
# [\pL\pN_], its Unicode \s adds the separators and a few control characters to RE2's ASCII \s.
RE2_TOKEN = r"[\pL\pN_]+|[^\pL\pN_\s\pZ\x{1c}-\x{1f}\x{85}]"
PAD_STRING = "\x01"  # what the Tokenizer pads its rows with (no tokenized text holds it): mapped to the pad id


def tokenize_in_graph(proto: Any, engine: Any) -> list[str]:
    """Move the scratch text inputs' tokenization into the graph: each such input becomes a string per row,
    lower-cased (StringNormalizer), split by ONNX Runtime's Tokenizer (RE2), looked up in the vocabulary
    (LabelEncoder: unknown -> 1, padding -> 0) and padded / cut to the fitted length; a row with no token is
    absent (the `present` input is and-ed with it). Returns the inputs moved."""
    from onnx import TensorProto, helper

    from polymodal.preprocess import PAD, UNK

    pretrained = engine.preprocessor.config.pretrained
    names = [n for n, m in engine.schema.inputs.items() if m is Modality.TEXT and n not in pretrained]
    if not names:
        return []
    graph, keys = proto.graph, engine.net.keys
    order = list(engine.schema.inputs)
    renamed = {keys[n]: f"{keys[n]}/ids" for n in names} | {"present": "present/graph"}
    for node in graph.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
    nodes = []

    def const(name: str, values: list[int]) -> str:
        tensor = helper.make_tensor(name, TensorProto.INT64, [len(values)], values)
        nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        return name

    columns = []  # the presence mask, column by column
    for j, name in enumerate(order):
        k = keys[name]
        col = f"present/{k}"
        nodes.append(helper.make_node("Slice", ["present", const(f"{col}/lo", [j]), const(f"{col}/hi", [j + 1]),
                                               const(f"{col}/axis", [1])], [col]))  # fmt: skip
        if name in names:
            st = engine.preprocessor.state[name]
            vocab, n = list(st["vocab"]), int(st["max_len"])
            nodes += [
                helper.make_node("StringNormalizer", [k], [f"{k}/lower"], case_change_action="LOWER",
                                 is_case_sensitive=1, locale="C.UTF-8"),
                helper.make_node("Tokenizer", [f"{k}/lower"], [f"{k}/tokens"], domain="com.microsoft", mark=0,
                                 mincharnum=1, pad_value=PAD_STRING, tokenexp=RE2_TOKEN),
                helper.make_node("LabelEncoder", [f"{k}/tokens"], [f"{k}/found"], domain="ai.onnx.ml",
                                 keys_strings=[*vocab, PAD_STRING], values_int64s=[*range(2, len(vocab) + 2), PAD],
                                 default_int64=UNK),
                helper.make_node("Pad", [f"{k}/found", const(f"{k}/pads", [0, 0, 0, n])], [f"{k}/padded"]),
                helper.make_node("Slice", [f"{k}/padded", const(f"{k}/lo", [0]), const(f"{k}/hi", [n]),
                                           const(f"{k}/axis", [1])], [f"{k}/ids"]),
                # the first id is not padding: the row has a token
                helper.make_node("Slice", [f"{k}/ids", const(f"{k}/lo1", [0]), const(f"{k}/hi1", [1]),
                                           const(f"{k}/axis1", [1])], [f"{k}/first"]),
                helper.make_node("Greater", [f"{k}/first", const(f"{k}/pad", [PAD])], [f"{k}/any"]),
                helper.make_node("And", [col, f"{k}/any"], [f"{col}/and"]),
            ]  # fmt: skip
            col = f"{col}/and"
        columns.append(col)
    nodes.append(helper.make_node("Concat", columns, ["present/graph"], axis=1))
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    for inp in graph.input:
        if inp.name in {keys[n] for n in names}:
            inp.CopyFrom(helper.make_tensor_value_info(inp.name, TensorProto.STRING, ["batch"]))
    domains = {o.domain for o in proto.opset_import}
    for domain, version in (("com.microsoft", 1), ("ai.onnx.ml", 2)):
        if domain not in domains:
            proto.opset_import.append(helper.make_opsetid(domain, version))
    return names


def add_tokenization(proto: Any, engine: Any) -> None:
    """`tokenize_in_graph`, recorded in the graph's metadata for the runtime."""
    proto.metadata_props.add(key="text_in_graph", value=json.dumps(tokenize_in_graph(proto, engine)))


def text_rule(preprocess: dict[str, Any], schema: Any) -> dict[str, Any]:
    """The tokenization the runtime applies before the graph, written beside it for other runtimes."""
    from polymodal.preprocess import _TOKEN, PAD, UNK

    cols = [c for c in schema.columns_of(Modality.TEXT) if c not in preprocess["config"]["pretrained"]]
    return {
        "rule": "lower-case the text; tokens = re.findall(pattern, text); id = 2 + index in vocab, or unknown_id; "
        "keep the first max_len ids, pad with pad_id on the right; a row with no token is absent",
        "pattern": _TOKEN.pattern,
        "pad_id": PAD,
        "unknown_id": UNK,
        "columns": {c: preprocess["state"][c] for c in cols},
    }


def export_onnx(model_dir: str | os.PathLike[str], output: str | os.PathLike[str], tokenize: bool = True) -> Path:
    """Export the model folder to `output` (.onnx), atomically; returns its path. A JSON file with the text
    tokenization (vocabularies and the rule) is written beside it as <output>.text.json when the model has text."""
    import onnx

    from polymodal.model.artifact import CONFIG, PREPROCESS, atomic_folder, read_json, write_json
    from polymodal.model.onnx_runtime import TOOLS_SUFFIX
    from polymodal.predictor import MultimodalPredictor

    model_dir, output = Path(model_dir), Path(output)
    if not (model_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{model_dir} is not a polymodal model folder (no {CONFIG} in it)")
    if output.suffix != ".onnx":
        raise UserError(f"the output must be a .onnx file, not {output}")
    torch, _ = _torch()
    predictor = MultimodalPredictor.load(model_dir)
    engine = predictor.engine
    graph = graph_module(predictor)
    example = example_inputs(engine, rows=2)
    keys = engine.net.keys
    names = [keys[n] for n in engine.schema.inputs]
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # torch.stft(return_complex=False) is deprecated, but it is the form the exporter turns into the ONNX
            # STFT operator (which has no complex tensors); the parity tests catch a torch where it stops working.
            warnings.filterwarnings("ignore", message="stft with return_complex=False is deprecated")
            torch.onnx.export(
                graph, tuple(torch.from_numpy(example.inputs[n]) for n in engine.schema.inputs)
                + (torch.from_numpy(example.present),), tmp, dynamo=False, opset_version=OPSET,
                input_names=[*names, "present"], output_names=["output"],
                dynamic_axes={k: {0: "batch"} for k in [*names, "present", "output"]},
            )  # fmt: skip
        proto = onnx.load(tmp)
        config = read_json(model_dir / CONFIG)
        preprocess = read_json(model_dir / PREPROCESS)
        meta = {
            "polymodal_version": __version__,
            "config": json.dumps(config),
            "preprocess": json.dumps(preprocess),
            "metrics": json.dumps(predictor.metrics_, default=str),
            "inputs": json.dumps({n: keys[n] for n in engine.schema.inputs}),
            "classes": json.dumps(engine.task.classes),
            "columns": json.dumps({c: m.value for c, m in engine.schema.columns.items()}),
            "source": str(model_dir.resolve()),
            "frozen_in_graph": json.dumps(frozen_in_graph(engine)),
        }
        del proto.metadata_props[:]
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        proto.doc_string = "polymodal model: raw inputs (see polymodal/optimize/export.py) -> task outputs"
        if tokenize:  # (int8: after quantizing; ONNX shape inference does not take the string operators)
            add_tokenization(proto, engine)
        onnx.save(proto, tmp)
        rule = text_rule(preprocess, engine.schema)
        if rule["columns"]:
            write_json(output.with_suffix(".text.json"), rule)
        tools = frozen_in_graph(engine)
        if any({"tokenizer", "extractor"} & set(engine.preprocessor.state[n]) for n in tools):
            with atomic_folder(output.with_suffix(TOOLS_SUFFIX)) as folder:
                save_tools(engine, tools, folder)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return output.resolve()


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
        elif modality is Modality.NUMERIC:
            inputs[name] = np.zeros((rows, len(s["columns"])), np.float64)
        else:
            inputs[name] = np.full((rows, len(s["columns"])), 2, np.int64)
    names = list(engine.schema.inputs)
    return Features(inputs, np.ones((rows, len(names)), bool), names)


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
        del proto.metadata_props[:]
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        tmp = Path(tmpdir) / "final.onnx"
        onnx.save(proto, str(tmp))
        os.replace(tmp, output)
    return output.resolve()


QUANTIZE = ("dynamic", "static")
CALIBRATION_ROWS = 256


def export_model(
    model_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    format: str = "onnx",
    quantize: str | None = None,
    calibration: Any = None,
) -> Path:
    """`polymodal export`: checks everything first (nothing is written on a refusal), exports the fp32 graph,
    then optionally quantizes it to int8 (`static` calibrates on the first rows of `calibration`)."""
    from polymodal.data.io import read_table
    from polymodal.data.schema import Schema
    from polymodal.data.validate import check_columns
    from polymodal.model.artifact import CONFIG, read_json

    model_dir, output = Path(model_dir), Path(output)
    if format not in FORMATS:
        raise UserError(f"--format must be one of {list(FORMATS)}, not {format!r}")
    if not (model_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{model_dir} is not a polymodal model folder (no {CONFIG} in it)")
    if output.suffix != ".onnx":
        raise UserError(f"the output must be a .onnx file, not {output}")
    if quantize is not None and quantize not in QUANTIZE:
        raise UserError(f"--quantize must be one of {list(QUANTIZE)}, not {quantize!r}")
    if quantize == "static" and calibration is None:
        raise UserError("--quantize static calibrates activation scales on training rows: give --calibration TABLE")
    table = None
    if calibration is not None:
        table = read_table(calibration)
        check_columns(table[0], Schema.from_dict(read_json(model_dir / CONFIG)["schema"]), training=False)
    if quantize is None:
        return export_onnx(model_dir, output)
    import onnx

    from polymodal.model.onnx_runtime import TOOLS_SUFFIX
    from polymodal.predictor import MultimodalPredictor

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as tmpdir:
        fp32 = export_onnx(model_dir, Path(tmpdir) / "fp32.onnx", tokenize=False)
        feeds = calibration_feeds(fp32, table) if quantize == "static" else None
        path = quantize_onnx(fp32, Path(tmpdir) / "int8.onnx", quantize, feeds)
        proto = onnx.load(str(path))
        add_tokenization(proto, MultimodalPredictor.load(model_dir).engine)
        onnx.save(proto, str(path))
        for suffix in (".text.json", TOOLS_SUFFIX):  # what the runtime reads beside the graph
            if fp32.with_suffix(suffix).exists():
                if output.with_suffix(suffix).is_dir():
                    shutil.rmtree(output.with_suffix(suffix))
                os.replace(fp32.with_suffix(suffix), output.with_suffix(suffix))
        os.replace(path, output)
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
