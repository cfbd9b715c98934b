"""What each column of a table is: its modality, and what the label asks for."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import pandas as pd

from polymodal.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi")


class Modality(str, Enum):
    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    VIDEO = "video"  # a file's frames and its sound track: two fusion inputs (see `video_inputs`)


class ProblemType(str, Enum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"
    MULTILABEL = "multilabel"  # several labels per row, joined with LABEL_SEPARATOR: "cat|outdoor"
    TEXT = "text"  # free text generated from the inputs (captions, transcripts): polymodal/tasks/text.py

    @property
    def is_classification(self) -> bool:
        return self not in (ProblemType.REGRESSION, ProblemType.TEXT)

    @property
    def is_text(self) -> bool:
        return self is ProblemType.TEXT

    @property
    def is_multilabel(self) -> bool:
        return self is ProblemType.MULTILABEL


LABEL_SEPARATOR = "|"
# What an empty multilabel cell means (data.empty_label): "missing" (an unknown label: a bad row), "none" (the empty
# set of labels), or any other string: the token that a cell holds to say "no label" (e.g. "-"), an empty cell
# staying a missing label.
EMPTY_MISSING, EMPTY_NONE = "missing", "none"


class SchemaError(UserError):
    """The table does not match what was asked of it (a column is unknown, empty, or of the wrong kind)."""


# Numeric and categorical columns are fed to one tabular encoder each, so a table with 200 numeric
# columns is one fusion input, not 200. Media columns are one input each, keyed by column name.
NUMERIC_INPUT = "tabular:numeric"
CATEGORICAL_INPUT = "tabular:categorical"
# A video column is two fusion inputs: its frames (a temporal image encoder) and its sound track (the audio
# encoder), so every fusion sees pictures and sound as inputs of their own, each with its presence.
FRAMES, SOUND = ":frames", ":sound"


def video_inputs(column: str) -> dict[str, Modality]:
    return {column + FRAMES: Modality.VIDEO, column + SOUND: Modality.AUDIO}


def input_column(name: str, columns: dict[str, Modality]) -> str:
    """The table column behind a media input (a video's frames and sound track are its column's)."""
    for suffix in (FRAMES, SOUND):
        if name.endswith(suffix) and columns.get(name[: -len(suffix)]) is Modality.VIDEO:
            return name[: -len(suffix)]
    return name


@dataclass
class Schema:
    """Column -> modality, plus the label and its problem type. Round-trips through JSON."""

    columns: dict[str, Modality]
    label: str
    problem_type: ProblemType
    ignored: list[str] = field(default_factory=list)
    empty_label: str = EMPTY_MISSING  # multilabel only: see EMPTY_MISSING above (data.empty_label)

    def columns_of(self, modality: Modality) -> list[str]:
        return [c for c, m in self.columns.items() if m is modality]

    @property
    def inputs(self) -> dict[str, Modality]:
        """The fusion inputs, in a fixed order: one per media column, then the two tabular groups."""
        out: dict[str, Modality] = {}
        for col, mod in self.columns.items():
            if mod in (Modality.TEXT, Modality.IMAGE, Modality.AUDIO):
                out[col] = mod
            elif mod is Modality.VIDEO:  # a part in `ignored` (e.g. "clip:sound") is left out of the inputs
                out |= {n: m for n, m in video_inputs(col).items() if n not in self.ignored}
        if self.columns_of(Modality.NUMERIC):
            out[NUMERIC_INPUT] = Modality.NUMERIC
        if self.columns_of(Modality.CATEGORICAL):
            out[CATEGORICAL_INPUT] = Modality.CATEGORICAL
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["columns"] = {c: m.value for c, m in self.columns.items()}
        d["problem_type"] = self.problem_type.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        return cls(
            columns={c: Modality(m) for c, m in d["columns"].items()},
            label=d["label"],
            problem_type=ProblemType(d["problem_type"]),
            ignored=list(d.get("ignored", [])),
            empty_label=d.get("empty_label", EMPTY_MISSING),  # folders written before it: today's behaviour
        )


def _looks_like_paths(values: pd.Series, extensions: tuple[str, ...]) -> bool:
    sample = values.dropna().astype(str).head(200)
    if sample.empty:
        return False
    hits = sample.str.lower().str.strip().str.endswith(extensions)
    return bool(hits.mean() >= 0.9)


def _is_text(values: pd.Series) -> bool:
    """Free text has many distinct values with several words; a category has few distinct short values."""
    sample = values.dropna().astype(str)
    if sample.empty:
        return False
    n_unique = sample.nunique()
    mean_words = sample.head(500).map(lambda s: len(re.findall(r"\w+", s))).mean()
    return bool(mean_words >= 3 or (n_unique > 0.5 * len(sample) and mean_words >= 2))


def infer_modality(values: pd.Series) -> Modality:
    """Guess the modality of one input column from its values."""
    if pd.api.types.is_bool_dtype(values):
        return Modality.CATEGORICAL
    if pd.api.types.is_numeric_dtype(values):
        n_unique = values.nunique(dropna=True)
        # Small integer codes (0/1 flags, ratings) are better treated as categories.
        is_int_like = bool(np.all(np.mod(values.dropna().to_numpy(dtype=float), 1) == 0))
        return Modality.CATEGORICAL if is_int_like and n_unique <= 10 else Modality.NUMERIC
    if _looks_like_paths(values, IMAGE_EXTENSIONS):
        return Modality.IMAGE
    if _looks_like_paths(values, AUDIO_EXTENSIONS):
        return Modality.AUDIO
    if _looks_like_paths(values, VIDEO_EXTENSIONS):
        return Modality.VIDEO
    if _is_text(values):
        return Modality.TEXT
    return Modality.CATEGORICAL


def is_free_text_label(values: pd.Series) -> bool:
    """A label of free text (captions, transcripts): strings, at least 20 of them, mostly distinct (more than half
    of the values) and of several words (3 or more on average). A class label with a few values never is."""
    y = values.dropna()
    if pd.api.types.is_numeric_dtype(y) or len(y) < 20:
        return False
    s = y.astype(str)
    if s.str.contains(LABEL_SEPARATOR, regex=False).mean() > 0.1:  # sets of labels ("a|b|c"): multilabel
        return False
    words = s.head(1000).map(lambda v: len(re.findall(r"\w+", v))).mean()
    return bool(s.nunique() > 0.5 * len(s) and words >= 3)


def infer_problem_type(values: pd.Series) -> ProblemType:
    """Text for free text (`is_free_text_label`), multilabel when the values hold several labels (`a|b`), binary for
    two classes, multiclass for few integer or string classes, regression for real numbers."""
    y = values.dropna()
    if is_free_text_label(y):
        return ProblemType.TEXT
    if not pd.api.types.is_numeric_dtype(y) and y.astype(str).str.contains(LABEL_SEPARATOR, regex=False).any():
        return ProblemType.MULTILABEL
    n_unique = y.nunique()
    if n_unique <= 2:
        return ProblemType.BINARY
    if pd.api.types.is_numeric_dtype(y):
        is_int_like = bool(np.all(np.mod(y.to_numpy(dtype=float), 1) == 0))
        if not is_int_like or n_unique > max(20, int(0.2 * len(y))):
            return ProblemType.REGRESSION
    return ProblemType.MULTICLASS


def infer_schema(
    df: pd.DataFrame,
    label: str,
    overrides: dict[str, Modality] | None = None,
    ignore: list[str] | None = None,
    problem_type: ProblemType | str | None = None,
    empty_label: str = EMPTY_MISSING,
) -> Schema:
    """Infer each column's modality.

    `overrides` pins the modality of the columns it names; every other column is still inferred.
    `ignore` leaves columns out of the inputs (or one part of a video column: "clip:sound").
    `empty_label`: what an empty multilabel cell means (`check_empty_label`).
    """
    overrides = dict(overrides or {})
    ignore = list(ignore or [])
    # A video's part ("clip:sound", "clip:frames") may be left out on its own.
    parts = [c for c in ignore if c.endswith((FRAMES, SOUND)) and c.rsplit(":", 1)[0] in df.columns]
    unknown = [c for c in [label, *overrides, *ignore] if c not in df.columns and c not in parts]
    if unknown:
        raise SchemaError(
            f"unknown column(s) {unknown}: the table has columns {list(df.columns)}. "
            "Check the spelling of --label and the modality options."
        )
    if label in overrides:
        raise SchemaError(f"column {label!r} is the label and cannot also be an input")
    columns: dict[str, Modality] = {}
    for col in df.columns:
        if col == label or col in ignore:
            continue
        if col in overrides:
            columns[col] = Modality(overrides[col])
            continue
        if df[col].isna().all():
            raise SchemaError(
                f"column {col!r} is 100% empty: there is nothing to learn from it. "
                f"Fill it in, or leave it out with --ignore {col}."
            )
        columns[col] = infer_modality(df[col])
    if not columns:
        raise SchemaError(f"no input columns left besides the label {label!r}")
    choices = [t.value for t in ProblemType]
    if problem_type and str(getattr(problem_type, "value", problem_type)) not in choices:
        raise SchemaError(f"problem type must be one of {choices}, not {problem_type!r}")
    ptype = ProblemType(problem_type) if problem_type else infer_problem_type(df[label])
    return Schema(columns=columns, label=label, problem_type=ptype, ignored=ignore,
                  empty_label=check_empty_label(empty_label))  # fmt: skip


def check_empty_label(value: str) -> str:
    """data.empty_label: "missing", "none", or a token of its own (not blank, without the separator)."""
    token = str(value).strip()
    if not token or LABEL_SEPARATOR in token:
        raise SchemaError(
            f"data.empty_label must be 'missing', 'none' or a token such as '-' that a cell holds to say 'no label' "
            f"(not blank, without {LABEL_SEPARATOR!r}), not {value!r}"
        )
    return token
