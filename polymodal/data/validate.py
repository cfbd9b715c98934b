"""Row-level validation: every problem names its row, column and reason, and nothing is dropped silently."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from polymodal.data.io import resolve_path
from polymodal.data.media import MediaError, decode_audio, decode_image
from polymodal.data.redact import quote_value
from polymodal.data.schema import (
    EMPTY_MISSING,
    EMPTY_NONE,
    FRAMES,
    LABEL_SEPARATOR,
    SOUND,
    Modality,
    Schema,
    SchemaError,
)
from polymodal.data.video import decode_video
from polymodal.errors import UserError

MAX_LISTED = 20


@dataclass(frozen=True)
class Problem:
    row: int
    column: str
    reason: str


class BadRowsError(UserError):
    """Raised when rows fail validation and the caller asked to stop (the default)."""

    def __init__(self, problems: list[Problem] | str, table: str = "the table"):
        if isinstance(problems, str):  # re-raised from a loader worker process, with the message made there
            self.problems = []
            super().__init__(problems)
            return
        self.problems = problems
        rows = sorted({p.row for p in problems})
        lines = [f"  row {p.row}, column {p.column!r}: {p.reason}" for p in problems[:MAX_LISTED]]
        if len(problems) > MAX_LISTED:
            lines.append(f"  ... and {len(problems) - MAX_LISTED} more problem(s)")
        super().__init__(
            f"{len(rows)} bad row(s) in {table} ({len(problems)} problem(s)); rows are numbered from 0:\n"
            + "\n".join(lines)
            + "\nFix or remove these rows, or pass --on-bad-rows skip (Python: on_bad_rows='skip') "
            "to drop them and write a report of what was dropped."
        )


def is_missing(value: object) -> bool:
    """An empty cell: None, NaN, or a blank string. A missing input is a missing modality, not an error."""
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def check_columns(df: pd.DataFrame, schema: Schema, *, training: bool) -> None:
    """Every input column must exist; in training an input column may not be 100 % empty."""
    absent = [c for c in schema.columns if c not in df.columns]
    if absent:
        raise SchemaError(
            f"column(s) {absent} are missing from the table (it has {list(df.columns)}). "
            "Add them (an empty column means the modality is absent for every row) or fix the names."
        )
    if training:
        for col in schema.columns:
            if df[col].map(is_missing).all():
                raise SchemaError(
                    f"column {col!r} is 100% empty: there is nothing to learn from it. "
                    f"Fill it in, or leave it out with --ignore {col}."
                )


def check_labels(df: pd.DataFrame, schema: Schema) -> list[Problem]:
    if schema.label not in df.columns:
        raise SchemaError(f"label column {schema.label!r} is missing from the table (it has {list(df.columns)})")
    y = df[schema.label]
    if schema.problem_type.is_multilabel:
        return _check_label_sets(y, schema)
    problems = [Problem(int(i), schema.label, "label is empty (NaN)") for i in np.flatnonzero(y.isna().to_numpy())]
    if schema.problem_type.is_text:  # a target of only spaces is as empty as a missing one
        blank = np.flatnonzero(y.notna().to_numpy() & (y.astype(str).str.strip() == "").to_numpy())
        problems += [Problem(int(i), schema.label, "the target text is empty") for i in blank]
        return sorted(problems, key=lambda p: p.row)
    if not schema.problem_type.is_classification:
        values = pd.to_numeric(y, errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy() & ~y.isna().to_numpy())
        problems += [Problem(int(i), schema.label, f"label {quote_value(y.iloc[i])} is not a number") for i in bad]
    return problems


def _check_label_sets(y: pd.Series, schema: Schema) -> list[Problem]:
    """Multilabel cells per data.empty_label: with "none" an empty cell is the empty set; with a token, only a cell
    holding exactly the token is (alone: "-|cat" is a bad row); otherwise an empty cell is a missing label."""
    mode, problems = schema.empty_label, []
    hint = "" if mode == EMPTY_NONE else " (a row with no label: --set data.empty_label=none, or a token such as '-')"
    for i, v in enumerate(y.tolist()):
        parts = [] if is_missing(v) else [s.strip() for s in str(v).split(LABEL_SEPARATOR) if s.strip()]
        if mode not in (EMPTY_MISSING, EMPTY_NONE) and mode in parts and len(parts) > 1:
            problems.append(Problem(i, schema.label, f"the no-label token {mode!r} beside labels in {quote_value(v)}"))
        elif not parts and mode != EMPTY_NONE:
            reason = "label is empty (NaN)" if is_missing(v) else f"label {quote_value(v)} holds no label"
            problems.append(Problem(i, schema.label, reason + hint))
    return problems


def load_media(
    df: pd.DataFrame,
    schema: Schema,
    base_dir: Path,
    image_size: int,
    sample_rate: int,
    workers: int | None = None,
    sizes: dict[str, int] | None = None,
    rates: dict[str, int] | None = None,
    skip: tuple[str, ...] = (),
    image_fit: str = "squash",
    fits: dict[str, str] | None = None,
    video: dict | None = None,
) -> tuple[dict[str, list[np.ndarray | None]], list[Problem]]:
    """Decode every image and audio cell. Returns per column a list (None where the cell is empty) and problems.
    A video column gives two lists, its frames ("COL:frames") and its sound track ("COL:sound", None for a clip
    without sound); `video` holds `decode_video`'s frame settings (n_frames, fps, max_seconds, max_pixels).

    `sizes`/`rates`/`fits` override the image size / sample rate / image fit per column (pretrained encoders
    have their own; a video's sound track: `rates["COL:sound"]`);
    columns in `skip` are left alone (frozen encoders read them through the feature cache).
    """
    sizes, rates, fits = sizes or {}, rates or {}, fits or {}
    decoders: dict[str, Callable[[Path], np.ndarray]] = {}
    for col in schema.columns_of(Modality.IMAGE):
        if col not in skip:
            decoders[col] = lambda p, s=sizes.get(col, image_size), f=fits.get(col, image_fit): decode_image(
                p, s, fit=f
            )
    for col in schema.columns_of(Modality.AUDIO):
        if col not in skip:
            decoders[col] = lambda p, r=rates.get(col, sample_rate): decode_audio(p, r)

    videos = [c for c in schema.columns_of(Modality.VIDEO) if c not in skip]
    for col in videos:  # the sound track at its input's rate (a pretrained audio encoder's own)
        decoders[col] = lambda p, v=dict(video or {}), r=rates.get(col + SOUND, sample_rate): decode_video(
            p, size=image_size, sample_rate=r, fit=image_fit, **v
        )

    def one(col: str, i: int, value: object) -> tuple[np.ndarray | None, Problem | None]:
        if is_missing(value):
            return None, None
        try:
            source = value if isinstance(value, bytes) else resolve_path(str(value), base_dir)
            return decoders[col](source), None
        except MediaError as e:
            return None, Problem(i, col, str(e))

    out: dict[str, list[np.ndarray | None]] = {}
    problems: list[Problem] = []
    n_workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        for col in decoders:
            results = list(pool.map(lambda iv, c=col: one(c, iv[0], iv[1]), enumerate(df[col].tolist())))
            out[col] = [r[0] for r in results]
            problems += [r[1] for r in results if r[1] is not None]
    for col in videos:  # each clip -> its frames and its sound track, two inputs
        clips = out.pop(col)
        out[col + FRAMES] = [None if c is None else c.frames for c in clips]
        out[col + SOUND] = [None if c is None else c.sound for c in clips]
    return out, problems


def check_files(df: pd.DataFrame, schema: Schema, base_dir: Path, skip: tuple[str, ...] = ()) -> list[Problem]:
    """Every image and audio cell's file exists and is not empty, without decoding it (a streamed fit checks
    every row this way and decodes only a sample before training). Columns in `skip` are left alone."""
    from polymodal.data.media import MediaError, check_file

    problems = []
    media = (Modality.IMAGE, Modality.AUDIO, Modality.VIDEO)
    for col in [c for c, m in schema.columns.items() if m in media]:
        if col in skip:
            continue
        for i, value in enumerate(df[col].tolist()):
            if is_missing(value) or isinstance(value, bytes):
                continue
            try:
                check_file(resolve_path(str(value), base_dir))
            except MediaError as e:
                problems.append(Problem(i, col, str(e)))
    return problems


def write_report(problems: list[Problem], path: Path) -> None:
    """Write what was dropped as CSV (row, column, reason), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    pd.DataFrame([p.__dict__ for p in problems], columns=["row", "column", "reason"]).to_csv(tmp, index=False)
    os.replace(tmp, path)


def check_group_column(df: pd.DataFrame, column: str | None, table: str = "the table") -> None:
    """A clear error, before any work, when the group column is missing."""
    if column is not None and column not in df.columns:
        raise UserError(
            f"--group-by {column!r}: {table} has no column {column!r} (columns: {list(df.columns)}); "
            "name a column of the table or leave --group-by out"
        )


def check_split_column(df: pd.DataFrame, column: str | None, label: str | None, table: str = "the table") -> None:
    """`data.split_by` must name a column of whole groups: present, not the label, no empty cell, two groups."""
    if column is None:
        return
    if column not in df.columns:
        raise UserError(
            f"--split-by {column!r}: {table} has no column {column!r} (columns: {list(df.columns)}); "
            "name the column that says who each row comes from (e.g. speaker) or leave --split-by out"
        )
    if column == label:
        raise UserError(f"--split-by {column!r} is the label; name the column of groups (e.g. speaker) instead")
    empty = np.flatnonzero(df[column].isna().to_numpy() | (df[column].astype(str).str.strip() == "").to_numpy())
    if len(empty):
        rows = ", ".join(str(r) for r in empty[:10]) + (" ..." if len(empty) > 10 else "")
        raise UserError(
            f"--split-by {column!r}: {len(empty)} row(s) of {table} have no group (rows {rows}); fill the column "
            "(a row whose group is unknown cannot be kept out of validation with its group) or drop those rows"
        )
    if df[column].nunique() < 2:
        raise UserError(
            f"--split-by {column!r}: {table} has a single group ({df[column].iloc[0]!r}); a grouped split needs at "
            "least two, one of them held out for validation"
        )


# Column names that say "who a row comes from": a random split puts the same person on both sides of it.
_GROUP_NAME = re.compile(
    r"(^|[_\s-])(speaker|patient|subject|user|participant|person|customer|client|writer|author|doctor|"
    r"household|family|session|site|hospital|device)s?([_\s-]?(id|name|no|code))?$",
    re.IGNORECASE,
)


def group_column_hint(df: pd.DataFrame, left_out: list[str]) -> str | None:
    """A hint when a column looks like an id of speakers / patients / ... with repeated values and the user set no
    `data.split_by`: validation scores would then reward remembering those groups."""
    for column in df.columns:
        if not _GROUP_NAME.search(str(column)):
            continue
        n = df[column].nunique()
        if 2 <= n <= len(df) // 2:
            leave = "" if column in left_out else f" (and leave it out of the inputs: --ignore {column})"
            return (
                f"hint: column {column!r} looks like a group id ({n} values over {len(df)} rows); rows of one "
                f"group are on both sides of a random validation split, so early stopping rewards groups it has "
                f"seen. To score on unseen groups, pass --split-by {column}{leave}."
            )
    return None
