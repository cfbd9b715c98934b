"""The scratch text inputs' tokenization in the ONNX graph, written with onnx's helper (the exporter cannot trace
string operators): StringNormalizer, ONNX Runtime's Tokenizer (RE2) and LabelEncoder; and the same rule written
beside the graph as JSON for other runtimes."""

from __future__ import annotations

import json
from typing import Any

from polymodal.data.schema import Modality

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
