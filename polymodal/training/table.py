"""The training table, read once: what `fit` (and the studies that share its work) begin with.

One pass: the table is read once, its schema inferred once, its columns checked once; then its media decoded
(with the bad-row policy) and split. A table that streams is looked at through its first `HEAD_ROWS` rows only,
and the same rows give its schema.

Whether a file streams (`data.streaming: auto`) needs its size in decoded bytes. Most tables are settled by a
row count alone: when even a row of the costliest kind in every column would fit, the table stays in memory and
nothing is inferred for the decision. Only a table near the limit is decided on the kinds of its first rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.config import Config
from polymodal.data.io import read_table, table_name
from polymodal.data.schema import Modality, ProblemType, Schema, infer_schema
from polymodal.data.validate import (
    BadRowsError,
    Problem,
    check_columns,
    check_group_column,
    check_labels,
    check_split_column,
    group_column_hint,
)
from polymodal.errors import UserError
from polymodal.preprocess import PreprocessConfig, Preprocessor, estimate_row_bytes, max_row_bytes

log = logging.getLogger("polymodal")

DROPPED_REPORT = "dropped_rows.csv"
HEAD_ROWS = 10_000  # streaming: the rows the schema and the pretrained inputs' settings are inferred from


@dataclass
class TrainTable:
    """The training table as `fit` sees it: all its rows, or (streaming) its first `HEAD_ROWS`."""

    source: Any
    df: pd.DataFrame
    base_dir: Path
    schema: Schema
    streaming: bool


def infer(cfg: Config, df: pd.DataFrame) -> Schema:
    """The schema the config's data section asks for, inferred from `df`."""
    d = cfg.data
    check_group_column(df, d.group_by)  # before inference: it would only say "unknown column"
    check_split_column(df, d.split_by, d.label)
    modalities = {c: Modality(m) for c, m in d.modalities.items()}
    return infer_schema(df, d.label, modalities, d.left_out(), d.problem_type, d.empty_label)


def streams(cfg: Config, source: Any, schema: Schema | None = None) -> bool:
    """Whether `source` is read in chunks (data.streaming: on, off, or auto: a file whose decoded rows would take
    more than a quarter of the available memory). `schema`: a fitted model's, when there is one."""
    return _decide(cfg, source, schema)[0]


def _decide(cfg: Config, source: Any, schema: Schema | None) -> tuple[bool, tuple[pd.DataFrame, Schema] | None]:
    """(streams, the head and its schema when they had to be inferred for the decision)."""
    from polymodal.data.stream import available_memory, count_rows, head, wants_streaming

    mode = cfg.data.streaming
    if mode != "auto" or isinstance(source, pd.DataFrame):
        return wants_streaming(mode, source, 0), None
    rows, budget = count_rows(source), available_memory() // 4
    if schema is not None:
        return rows * estimate_row_bytes(schema, cfg.preprocess) > budget, None
    first = head(source, 1)
    if rows * max_row_bytes(len(first.columns), cfg.preprocess) <= budget:
        return False, None  # fits however its columns are read: nothing to infer
    first = head(source, HEAD_ROWS)
    probe = infer(cfg, first)
    return rows * estimate_row_bytes(probe, cfg.preprocess) > budget, (first, probe)


def open_train_table(cfg: Config, source: Any) -> TrainTable:
    """Read the training table (or, when it streams, its head) once and infer its schema once."""
    from polymodal.data.stream import head, table_dir

    streaming, probe = _decide(cfg, source, None)
    if streaming:
        df, schema = probe if probe is not None else (first := head(source, HEAD_ROWS), infer(cfg, first))
        return TrainTable(source, df, table_dir(source), schema, True)
    df, base_dir = read_table(source)
    return TrainTable(source, df, base_dir, infer(cfg, df), False)


def frozen_tokens(cfg: Config, schema: Schema | None = None) -> bool:
    """Whether frozen encoders cache their token outputs: as set; else when the fusion reads tokens, or a text
    decoder does (`decoder.memory: tokens`, or a CTC head over an input's tokens)."""
    from polymodal.fusion import FUSIONS

    wanted = cfg.encoders.frozen_tokens
    if wanted is not None:
        return wanted
    text = schema is not None and schema.problem_type is ProblemType.TEXT
    decoder_reads = text and (cfg.decoder.memory == "tokens" or cfg.decoder.name == "ctc")
    return decoder_reads or bool(getattr(FUSIONS[cfg.fusion.name], "consumes_tokens", False))


def _readout_preparation(cfg: Config, schema: Schema) -> dict[str, dict[str, Any]]:
    """{readout input: its text model's preprocess.json (its config and fitted state)}, for this table's inputs (a
    folder that is not there is named later, by the network)."""
    from polymodal.model.artifact import read_json

    out = {}
    for name, folder in cfg.encoders.readout.items():
        path = Path(folder) / "preprocess.json"
        if name in schema.inputs and path.is_file():
            out[name] = read_json(path)
    return out


def readout_states(cfg: Config, schema: Schema) -> dict[str, dict[str, Any]]:
    """The fitted preparation of each `encoders.readout` input, as its text model's folder holds it: the input must
    reach the text model as it did in that fit."""
    prepared = _readout_preparation(cfg, schema)
    return {n: p["state"][n] for n, p in prepared.items() if n in p.get("state", {})}


def pretrained_config(cfg: Config, schema: Schema) -> dict[str, dict[str, Any]]:
    """Resolve the pretrained encoder of each media column (nothing is loaded yet). A readout input's is its text
    model's (frozen tokens, fine-tuned, or none), whatever this fit's encoder settings: the folder decides how the
    input is prepared, so the readout needs no settings repeated."""
    from polymodal.encoders.pretrained import pretrained_settings
    from polymodal.encoders.video_pretrained import video_frames_settings

    pretrained = pretrained_settings(cfg.encoders, schema.columns, tokens=frozen_tokens(cfg, schema))
    pretrained |= video_frames_settings(cfg.encoders, schema.columns)  # a video's frames: "COL:frames"
    pretrained = {k: v for k, v in pretrained.items() if k in schema.inputs}  # not a video part left out (--ignore)
    for name, prepared in _readout_preparation(cfg, schema).items():
        pretrained.pop(name, None)
        if (theirs := prepared.get("config", {}).get("pretrained", {}).get(name)) is not None:
            pretrained[name] = theirs
    return pretrained


def start_pipeline(cfg: Config, table: TrainTable, cache_dir: Any, progress: bool) -> Any:
    """Check the table's columns (once), resolve the pretrained encoders and fit their settings on its rows.
    Returns the FeaturePipeline that decodes and preprocesses rows for this schema."""
    from polymodal.model.pipeline import FeaturePipeline

    check_group_column(table.df, cfg.data.group_by, table_name(table.source))
    check_split_column(table.df, cfg.data.split_by, table.schema.label, table_name(table.source))
    if cfg.data.split_by is None and (hint := group_column_hint(table.df, cfg.data.left_out())):
        log.warning(hint)
    check_columns(table.df, table.schema, training=True)
    config = PreprocessConfig(**(cfg.preprocess.to_dict() | {"pretrained": pretrained_config(cfg, table.schema),
                                                             "fixed": readout_states(cfg, table.schema)}))  # fmt: skip
    preprocessor = Preprocessor(table.schema, config).fit_pretrained(table.df, table.base_dir)
    return FeaturePipeline(table.schema, preprocessor, cache_dir, progress=progress)


def load_rows(
    cfg: Config,
    source: Any,
    pipeline: Any,
    *,
    training: bool,
    table: tuple[pd.DataFrame, Path] | None = None,
    checked: bool = False,
) -> tuple[pd.DataFrame, dict, dict, list[Problem]]:
    """Read (unless `table` is given), check (unless `checked`: `start_pipeline` did) and decode a table; bad rows
    raise or are dropped, per data.on_bad_rows. Returns (table, decoded media, frozen embeddings, problems)."""
    from polymodal.model.pipeline import take_rows

    df, base_dir = table or read_table(source)
    if not checked:
        check_columns(df, pipeline.schema, training=training)
    problems = check_labels(df, pipeline.schema)
    media, frozen, media_problems = pipeline.decode(df, base_dir)
    problems = sorted(problems + media_problems, key=lambda p: (p.row, p.column))
    if problems:
        if cfg.data.on_bad_rows == "error":
            raise BadRowsError(problems, table_name(source))
        bad = sorted({p.row for p in problems})
        log.warning("dropping %d bad row(s) of %s; see %s", len(bad), table_name(source), DROPPED_REPORT)
        if len(bad) == len(df):
            raise BadRowsError(problems, table_name(source))
        df, media, frozen = take_rows(df, media, frozen, np.setdiff1d(np.arange(len(df)), bad))
    return df, media, frozen, problems


def split_rows(cfg: Config, df: pd.DataFrame, media: dict, frozen: dict, schema: Schema) -> tuple[tuple, tuple]:
    """A stratified (when possible) validation split of the training rows, same seed, same rows every time; with
    `data.split_by`, whole groups (see `group_split`)."""
    from polymodal.model.pipeline import take_rows

    tr, va = group_split(cfg, df, schema) if cfg.data.split_by else random_split(cfg, df, schema)
    return take_rows(df, media, frozen, np.sort(tr)), take_rows(df, media, frozen, np.sort(va))


def random_split(cfg: Config, df: pd.DataFrame, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(df))
    y = df[schema.label].fillna("")  # a multilabel row with no label (data.empty_label: none) is a set of its own
    stratify = None
    if schema.problem_type.is_classification:
        counts = y.value_counts()
        n_valid = int(np.ceil(cfg.data.valid_fraction * len(df)))
        if counts.min() >= 2 and n_valid >= len(counts):
            stratify = y.astype(str)
    return train_test_split(idx, test_size=cfg.data.valid_fraction, random_state=cfg.train.seed, stratify=stratify)


def group_split(cfg: Config, df: pd.DataFrame, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """Validation rows are whole groups of `data.split_by`: one fold of round(1 / valid_fraction) group folds
    (at most one fold a group, at least two folds), stratified by label where the classes allow it
    (StratifiedGroupKFold), else groups in a seeded random order until the fraction is reached. So with 5
    speakers and the default 0.1, one speaker (about 20 % of the rows) validates."""
    groups = df[cfg.data.split_by].astype(str).to_numpy()
    unique = np.unique(groups)
    n_folds = int(min(len(unique), max(2, round(1 / cfg.data.valid_fraction))))
    y = df[schema.label].fillna("")  # as in random_split
    if schema.problem_type.is_classification and y.value_counts().min() >= n_folds:
        from sklearn.model_selection import StratifiedGroupKFold

        folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=cfg.train.seed)
        tr, va = next(folds.split(np.zeros(len(df)), y.astype(str), groups))
        if len(va) and len(tr):
            return tr, va
    chosen = pick_groups(pd.Series(groups).value_counts(), 1 / n_folds, cfg.train.seed)
    va = np.flatnonzero(np.isin(groups, chosen))
    return np.setdiff1d(np.arange(len(df)), va), va


def pick_groups(sizes: pd.Series, fraction: float, seed: int) -> list[str]:
    """Validation groups: in a seeded random order until `fraction` of the rows is reached, at least one group and
    never all of them. `sizes`: rows per group (value_counts)."""
    order = np.random.default_rng(seed).permutation(np.sort(np.asarray(sizes.index, dtype=str)))
    sizes = sizes.rename(index=str)
    chosen: list[str] = []
    rows = 0
    for g in order[:-1]:  # never every group: training keeps at least one
        if chosen and rows >= fraction * sizes.sum():
            break
        chosen.append(str(g))
        rows += int(sizes[g])
    return chosen


def group_folds(groups: pd.Series, max_folds: int = 10, seed: int = 0) -> list[list[str]]:
    """The held-out groups of each fold of a leave-groups-out cross-validation: one group a fold when there are at
    most `max_folds` groups (leave-one-group-out), else `max_folds` folds of groups in a seeded random order,
    sized by rows."""
    sizes = groups.astype(str).value_counts()
    if len(sizes) < 2:
        raise UserError(f"leave-groups-out needs at least two groups in {groups.name!r}, not {len(sizes)}")
    if len(sizes) <= max_folds:
        return [[g] for g in sorted(sizes.index)]
    order = np.random.default_rng(seed).permutation(np.asarray(sizes.index))
    folds: list[list[str]] = [[] for _ in range(max_folds)]
    rows = np.zeros(max_folds)
    for g in order:  # each group to the fold with the fewest rows so far: folds of about equal size
        k = int(np.argmin(rows))
        folds[k].append(str(g))
        rows[k] += sizes[g]
    return [sorted(f) for f in folds]


class LabelValues:
    """What `Task.fit` needs of the training labels, gathered chunk by chunk: the distinct classes, or the values
    of a regression target (8 bytes a row)."""

    def __init__(self, problem_type: Any):
        self.classification = problem_type.is_classification
        self.text = problem_type.is_text
        self.texts: list[pd.Series] = []
        self.classes: dict[Any, None] = {}
        self.values: list[np.ndarray] = []

    def update(self, y: pd.Series) -> None:
        if self.text:  # a text label's vocabulary is counted over every target
            self.texts.append(y.dropna().astype(str))
        elif self.classification:
            self.classes.update(dict.fromkeys(y.dropna().unique().tolist()))
        else:
            self.values.append(pd.to_numeric(y, errors="coerce").to_numpy(dtype=np.float64))

    def series(self) -> pd.Series:
        if self.text:
            return pd.concat(self.texts, ignore_index=True) if self.texts else pd.Series([], dtype=object)
        if self.classification:
            return pd.Series(list(self.classes), dtype=object)
        return pd.Series(np.concatenate(self.values) if self.values else np.zeros(0))
