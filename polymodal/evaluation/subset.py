"""Views of a schema, a preprocessor or `Features` restricted to some fusion inputs.

A unimodal baseline is the same model with the other inputs left out; since each input's preprocessing state
depends only on its own columns and the training rows, the sub-preprocessor of a fitted one is exactly what a
fit on those columns alone would learn. That is what lets `compare` preprocess once and share the arrays.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from polymodal.data.schema import CATEGORICAL_INPUT, NUMERIC_INPUT, Modality, Schema, input_column
from polymodal.preprocess import Features, Preprocessor


def input_columns(schema: Schema, name: str) -> list[str]:
    """The table columns behind one fusion input (the tabular inputs group several columns); a video's frames or
    sound track is named as itself, which `ignore` takes to leave that part out."""
    if name == NUMERIC_INPUT:
        return schema.columns_of(Modality.NUMERIC)
    if name == CATEGORICAL_INPUT:
        return schema.columns_of(Modality.CATEGORICAL)
    return [name]


def sub_schema(schema: Schema, inputs: list[str]) -> Schema:
    unknown = [n for n in inputs if n not in schema.inputs]
    if unknown:
        raise ValueError(f"unknown input(s) {unknown}; the schema has {list(schema.inputs)}")
    keep = {input_column(c, schema.columns) for n in inputs for c in input_columns(schema, n)}
    columns = {c: m for c, m in schema.columns.items() if c in keep}
    ignored = list(schema.ignored) + [c for c in schema.columns if c not in keep]
    # a video kept for one of its parts (frames or sound track) leaves the other part out
    ignored += [n for n in schema.inputs if n not in inputs and n not in ignored and input_column(n, columns) in keep]
    return Schema(columns, schema.label, schema.problem_type, ignored, empty_label=schema.empty_label)


def sub_preprocessor(preprocessor: Preprocessor, schema: Schema) -> Preprocessor:
    config = preprocessor.config
    if getattr(config, "pretrained", None):  # only the pretrained encoders of the inputs kept
        config = dataclasses.replace(
            config, pretrained={k: v for k, v in config.pretrained.items() if k in schema.inputs}
        )
    p = Preprocessor(schema, config)
    p.state = {n: preprocessor.state[n] for n in schema.inputs}
    return p


def select_features(features: Features, names: list[str]) -> Features:
    """The arrays and presence columns of `names`, in that order (no copy of the arrays)."""
    idx = [features.input_names.index(n) for n in names]
    index = {n: features.index[n] for n in names if n in features.index}  # files kept once (Features.index)
    return Features({n: features.stored[n] for n in names}, features.present[:, idx], list(names), index)


def merge_features(parts: list[Features]) -> Features:
    inputs: dict[str, np.ndarray] = {}
    index: dict[str, np.ndarray] = {}
    for f in parts:
        inputs |= f.stored
        index = {n: i for n, i in index.items() if n not in f.stored} | f.index  # an input's array and index together
    names = [n for f in parts for n in f.input_names]
    return Features(inputs, np.concatenate([f.present for f in parts], axis=1), names, index)
