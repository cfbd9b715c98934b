"""Export a model folder to one ONNX graph with the preprocessing inside, checked against PyTorch by the tests.

The graph's inputs (see `Preprocessor.graph_inputs`), one per fusion input, plus `present` (bool, batch x inputs):
- image (scratch): uint8 pixels (batch, 3, S, S) as decoded and resized by `decode_image` (the size S is fixed:
  resizing stays in the decoder, PIL's bilinear filter, so the graph sees exactly the pixels PyTorch sees);
  the graph scales to [0, 1] and normalizes with the fitted mean/std;
- audio (scratch): the waveform (batch, n_samples) float32 at the model's sample rate, zero-padded or cut to
  the fitted length; the graph computes the STFT (the ONNX STFT operator with the Hann window), the
  mel filterbank, dB below each clip's peak, the MFCC (DCT-II) and the standardization, as librosa does;
- video (scratch): two inputs per video column. "COL:frames": the kept frames (batch, frames, 3, S, S) uint8 as
  `polymodal.data.video.decode_video` samples and resizes them (decoding the file, choosing the frames and resizing
  stay outside the graph, in PyAV); the graph scales and standardizes them inside the video encoder. "COL:sound":
  the clip's sound track as an audio input (the waveform, zeros and `present` False for a clip without sound);
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

This module checks the arguments and writes the files; the pieces are beside it: `onnx_graph` (the module traced:
preprocessing -> network -> output), `onnx_preprocess` (image, audio, numeric preprocessing as PyTorch modules),
`onnx_frozen` (frozen pretrained encoders and their tokenizers), `onnx_text` (the text tokenization, added to the
traced graph), `onnx_quantize` (int8).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from polymodal.errors import UserError
from polymodal.files import make_temp_file
from polymodal.optimize.onnx_frozen import frozen_backbone, frozen_in_graph, save_tools
from polymodal.optimize.onnx_graph import NET_SCOPE, example_inputs, graph_module, set_metadata
from polymodal.optimize.onnx_preprocess import audio_tables
from polymodal.optimize.onnx_quantize import (
    CALIBRATION_ROWS,
    QUANTIZE,
    calibration_feeds,
    int8_weight_only,
    quantize_onnx,
)
from polymodal.optimize.onnx_text import PAD_STRING, RE2_TOKEN, add_tokenization, text_rule, tokenize_in_graph
from polymodal.version import __version__

# What this module offered before it was split: importable from here still.
__all__ = [
    "CALIBRATION_ROWS",
    "FORMATS",
    "META_KEYS",
    "NET_SCOPE",
    "OPSET",
    "PAD_STRING",
    "QUANTIZE",
    "RE2_TOKEN",
    "add_tokenization",
    "audio_tables",
    "calibration_feeds",
    "example_inputs",
    "export_model",
    "export_onnx",
    "frozen_backbone",
    "frozen_in_graph",
    "graph_module",
    "int8_weight_only",
    "quantize_onnx",
    "save_tools",
    "text_rule",
    "tokenize_in_graph",
]

FORMATS = ("onnx",)
OPSET = 17
META_KEYS = ("polymodal_version", "config", "preprocess", "metrics", "inputs", "classes", "columns", "source")


def _check_paths(model_dir: Path, output: Path) -> None:
    """Refuse a folder that is not a model folder, and an output that is not a .onnx file."""
    from polymodal.model.artifact import CONFIG

    if not (model_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{model_dir} is not a polymodal model folder (no {CONFIG} in it)")
    if output.suffix != ".onnx":
        raise UserError(f"the output must be a .onnx file, not {output}")


def export_onnx(
    model_dir: str | os.PathLike[str], output: str | os.PathLike[str], tokenize: bool = True, predictor: Any = None
) -> Path:
    """Export the model folder to `output` (.onnx), atomically; returns its path. A JSON file with the text
    tokenization (vocabularies and the rule) is written beside it as <output>.text.json when the model has text.
    `predictor`: the folder's model already loaded (the server's), so it is not read again."""
    import onnx
    import torch

    from polymodal.model.artifact import CONFIG, PREPROCESS, atomic_folder, read_json, write_json
    from polymodal.model.onnx_runtime import TOOLS_SUFFIX
    from polymodal.predictor import MultimodalPredictor

    model_dir, output = Path(model_dir), Path(output)
    _check_paths(model_dir, output)
    predictor = predictor or MultimodalPredictor.load(model_dir)
    engine = predictor.engine
    graph = graph_module(predictor)
    text = engine.task.is_text  # two graphs: inputs -> memory, and a decoder step (optimize/onnx_decoder.py)
    if text:
        from polymodal.optimize import onnx_decoder

        graph = onnx_decoder.memory_module(graph)
        outputs, axes = onnx_decoder.output_names(engine.net), onnx_decoder.dynamic_axes(engine.net)
    else:
        outputs, axes = ["output"], {"output": {0: "batch"}}
    example = example_inputs(engine, rows=2)
    keys = engine.net.keys
    names = [keys[n] for n in engine.schema.inputs]
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(output)  # the umask's mode, not mkstemp's 0600
    tmp = str(tmp)
    os.close(fd)
    try:
        with warnings.catch_warnings(), contextlib.ExitStack() as stack:
            # torch.stft(return_complex=False) is deprecated, but it is the form the exporter turns into the ONNX
            # STFT operator (which has no complex tensors); the parity tests catch a torch where it stops working.
            warnings.filterwarnings("ignore", message="stft with return_complex=False is deprecated")
            fast_path = torch.backends.mha.get_fastpath_enabled()
            # A frozen transformer layer (no parameter wants a gradient) would take torch's fused fast path, an
            # operator ONNX does not have.
            torch.backends.mha.set_fastpath_enabled(False)
            stack.callback(torch.backends.mha.set_fastpath_enabled, fast_path)
            torch.onnx.export(
                graph, tuple(torch.from_numpy(example.inputs[n]) for n in engine.schema.inputs)
                + (torch.from_numpy(example.present),), tmp, dynamo=False, opset_version=OPSET,
                input_names=[*names, "present"], output_names=outputs,
                dynamic_axes={k: {0: "batch"} for k in [*names, "present"]} | axes,
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
        if text:  # the decoder-step graph beside it, under its final name (replaced with the main graph)
            step = output.with_name(output.stem + onnx_decoder.DECODER_SUFFIX)
            meta["text_decoder"] = json.dumps(onnx_decoder.export_decoder_step(engine.net, step, OPSET))
        set_metadata(proto, meta)
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
    _check_paths(model_dir, output)
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
        fp32_step, step = fp32.with_name("fp32.decoder.onnx"), output.with_name(output.stem + ".decoder.onnx")
        if fp32_step.exists():  # a text model's decoder step stays fp32
            os.replace(fp32_step, step)
        for suffix in (".text.json", TOOLS_SUFFIX):  # what the runtime reads beside the graph
            if fp32.with_suffix(suffix).exists():
                if output.with_suffix(suffix).is_dir():
                    shutil.rmtree(output.with_suffix(suffix))
                os.replace(fp32.with_suffix(suffix), output.with_suffix(suffix))
        os.replace(path, output)
    return output.resolve()
