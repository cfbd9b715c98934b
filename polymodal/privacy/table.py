"""Anonymize a whole table: a new table, a new media folder and a report of counts (never values), written
atomically into a new folder. The source table and its files are only read."""

from __future__ import annotations

import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.config import Config
from polymodal.data.io import read_table, resolve_path
from polymodal.data.redact import quote_value
from polymodal.data.schema import Modality, infer_modality
from polymodal.data.validate import BadRowsError, Problem, is_missing
from polymodal.errors import UserError
from polymodal.files import atomic_folder
from polymodal.privacy.audio import DEFAULT_ALPHA, alpha_for, mcadams, read_wave, write_wav
from polymodal.privacy.image import FACE_MODES, cascades, cover_faces, read_rgb, write_png
from polymodal.privacy.text import DEFAULT_THRESHOLD, OPERATORS, TextAnonymizer
from polymodal.privacy.video import anonymize_video

SALT_ENV = "POLYMODAL_PRIVACY_SALT"
REPORT = "anonymization_report.json"
MEDIA = "media"
VOICE_MODES = ("mcadams", "keep")


@dataclass
class PrivacySettings:
    """What `anonymize_table` does. The hash operator's salt comes from `salt`, else from $POLYMODAL_PRIVACY_SALT."""

    operator: str = "placeholder"  # placeholder: <EMAIL_ADDRESS> | mask: ***** | hash: <EMAIL_ADDRESS_3f9a1c0b7e>
    salt: str | None = None
    ner_model: str | None = None  # a Hugging Face token-classification model (id or folder): names, places, orgs
    entities: list[str] | None = None  # None: every pattern type (and PERSON/LOCATION/ORGANIZATION with a model)
    threshold: float = DEFAULT_THRESHOLD
    faces: str = "blur"  # blur | box | keep
    voice: str = "mcadams"  # mcadams | keep
    alpha: float = DEFAULT_ALPHA
    alpha_range: tuple[float, float] | None = None  # a random alpha per recording, drawn from this range (seeded)
    seed: int = 0
    modalities: dict[str, str] = field(default_factory=dict)  # column -> modality, as in fit (--image, --audio ...)
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise UserError(f"unknown operator {self.operator!r}; choose one of {list(OPERATORS)}")
        if self.faces not in FACE_MODES:
            raise UserError(f"unknown face mode {self.faces!r}; choose one of {list(FACE_MODES)}")
        if self.voice not in VOICE_MODES:
            raise UserError(f"unknown voice mode {self.voice!r}; choose one of {list(VOICE_MODES)}")
        if self.alpha_range is not None:
            lo, hi = self.alpha_range
            if not 0.5 <= lo <= hi <= 1.5:
                raise UserError(f"alpha range must satisfy 0.5 <= low <= high <= 1.5, not {self.alpha_range}")

    def resolved_salt(self) -> str:
        salt = self.salt if self.salt is not None else os.environ.get(SALT_ENV, "")
        if self.operator == "hash" and not salt:
            raise UserError(
                f"the hash operator needs a secret salt: set ${SALT_ENV} (or PrivacySettings(salt=...)); "
                "the same salt maps the same value to the same token"
            )
        return salt

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded in the report: the salt itself never, only whether one was used."""
        d = asdict(self)
        d["salt"] = "set" if self.salt or os.environ.get(SALT_ENV) else None
        return d


def _column_modalities(df: pd.DataFrame, settings: PrivacySettings) -> dict[str, Modality]:
    out = {}
    for col in df.columns:
        if col in settings.modalities:
            out[col] = Modality(settings.modalities[col])
        elif df[col].map(is_missing).all():
            out[col] = Modality.CATEGORICAL  # nothing in it
        else:
            out[col] = infer_modality(df[col])
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "column"


def anonymize_frame(
    df: pd.DataFrame, base_dir: Path, out_dir: Path, settings: PrivacySettings
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Anonymize `df` (its relative paths resolve against `base_dir`); new media files go under out_dir/media.

    Every string cell of a non-media column is scanned (the label included: a class name can be a person's name);
    numbers are left as they are. Raises BadRowsError, naming rows and columns, for media that cannot be read."""
    salt = settings.resolved_salt()
    modalities = _column_modalities(df, settings)
    media_cols = [c for c, m in modalities.items() if m in (Modality.IMAGE, Modality.AUDIO, Modality.VIDEO)]

    # Missing files are found before any work is done.
    problems = []
    for col in media_cols:
        for i, v in enumerate(df[col].tolist()):
            if not is_missing(v) and not resolve_path(str(v), base_dir).is_file():
                problems.append(Problem(i, col, f"file not found: {quote_value(Path(str(v)).name, 40)}"))
    if problems:
        raise BadRowsError(problems)

    out = df.copy()
    report: dict[str, Any] = {"rows": len(df), "columns": {}, "entities": {}, "settings": settings.to_dict()}
    totals: Counter[str] = Counter()
    anonymizer = TextAnonymizer(
        settings.operator, salt, settings.ner_model, settings.entities, settings.threshold
    )  # fmt: skip
    for col, modality in modalities.items():
        if col in media_cols:
            continue
        values = df[col]
        strings = values.map(lambda v: isinstance(v, str) and not is_missing(v))
        if not strings.any():
            report["columns"][col] = {"modality": modality.value, "scanned": 0, "cells_changed": 0, "entities": {}}
            continue
        counts: Counter[str] = Counter()
        changed = 0
        cleaned: dict[str, str] = {}
        for value, n in values[strings].value_counts().items():
            before = Counter(anonymizer.counts)
            cleaned[value] = anonymizer(value)
            for entity, k in (anonymizer.counts - before).items():
                counts[entity] += k * int(n)
            changed += int(n) if cleaned[value] != value else 0
        out[col] = values.map(lambda v, m=cleaned: m.get(v, v) if isinstance(v, str) else v).astype(values.dtype)
        totals.update(counts)
        report["columns"][col] = {
            "modality": modality.value,
            "scanned": int(strings.sum()),
            "cells_changed": changed,
            "entities": dict(sorted(counts.items())),
        }

    # Media: each distinct file once, in a thread pool; new names say nothing about the old ones.
    for col in media_cols:
        modality = modalities[col]
        folder = out_dir / MEDIA / _safe(col)
        folder.mkdir(parents=True, exist_ok=True)
        first_row: dict[Path, int] = {}
        for i, v in enumerate(df[col].tolist()):
            if not is_missing(v):
                first_row.setdefault(resolve_path(str(v), base_dir), i)

        def one(item: tuple[Path, int], col=col, modality=modality, folder=folder) -> tuple[str, int, Problem | None]:
            source, row = item
            target = folder / (f"{row}.png" if modality is Modality.IMAGE else f"{row}.wav")
            if modality is Modality.VIDEO:  # faces in every frame, the voice of the sound track, no metadata
                alpha = alpha_for(row, settings.seed, settings.alpha, settings.alpha_range)
                try:
                    n = anonymize_video(source, target.with_suffix(".mp4"), settings.faces,
                                        alpha if settings.voice == "mcadams" else None)  # fmt: skip
                except (OSError, ValueError, RuntimeError) as e:
                    return "", 0, Problem(row, col, f"unreadable video file ({type(e).__name__})")
                return target.with_suffix(".mp4").name, n, None
            try:  # decoding: a file that does not decode is the table's problem, named by row and column only
                data = read_rgb(source) if modality is Modality.IMAGE else read_wave(source)
            except (OSError, ValueError, RuntimeError, SyntaxError) as e:
                return "", 0, Problem(row, col, f"unreadable {modality.value} file ({type(e).__name__})")
            if modality is Modality.IMAGE:
                rgb, faces = cover_faces(data, settings.faces)
                write_png(rgb, target)
                return target.name, faces, None
            wave, sr = data
            if settings.voice == "mcadams":
                alpha = alpha_for(row, settings.seed, settings.alpha, settings.alpha_range)
                wave = np.stack([mcadams(wave[:, c], sr, alpha) for c in range(wave.shape[1])], axis=1)
            write_wav(wave, sr, target)
            return target.name, 0, None

        if modality in (Modality.IMAGE, Modality.VIDEO) and settings.faces != "keep":
            cascades()
        workers = settings.workers or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = dict(zip(first_row, pool.map(one, first_row.items()), strict=True))
        problems += [r[2] for r in results.values() if r[2] is not None]
        rel = f"{MEDIA}/{_safe(col)}/"
        out[col] = [
            None if is_missing(v) else rel + results[resolve_path(str(v), base_dir)][0] for v in df[col].tolist()
        ]
        entry: dict[str, Any] = {"modality": modality.value, "files": len(first_row)}
        if modality in (Modality.IMAGE, Modality.VIDEO):
            entry["faces"] = sum(r[1] for r in results.values())
            entry["face_mode"] = settings.faces
            totals["FACE"] += entry["faces"]
        if modality in (Modality.AUDIO, Modality.VIDEO):
            entry["voice"] = settings.voice
        report["columns"][col] = entry
    if problems:
        raise BadRowsError(problems)
    report["entities"] = dict(sorted(totals.items()))
    return out, report


def _write_table(df: pd.DataFrame, path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        df.to_parquet(path, index=False)
    elif suffix in (".jsonl", ".ndjson"):
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")


def anonymize_table(
    source: str | os.PathLike[str] | pd.DataFrame, out_dir: str | os.PathLike[str], settings: PrivacySettings | None
) -> tuple[Path, dict[str, Any]]:
    """Write an anonymized copy of `source` into the new folder `out_dir`: the table (same name and format; CSV for
    a DataFrame), media/<column>/ and anonymization_report.json. Returns (path of the new table, report).

    Never in place: `out_dir` may not be the table's own folder or hold it. The folder appears whole or not at
    all (written to a temporary sibling, then renamed)."""
    import json

    settings = settings or PrivacySettings()
    df, base_dir = read_table(source)
    name = "table.csv" if isinstance(source, pd.DataFrame) else Path(source).name
    if name.endswith(".gz"):
        name = name[: -len(".gz")]
    if name.endswith(".json"):
        name += "l"  # written as JSON lines
    out_dir = Path(out_dir).resolve()
    if out_dir == base_dir.resolve() or base_dir.resolve().is_relative_to(out_dir):
        raise UserError(
            f"the output folder {str(out_dir)!r} holds the table itself: anonymization never works in place; "
            "choose a new folder"
        )
    with atomic_folder(out_dir) as tmp:
        clean, report = anonymize_frame(df, base_dir, tmp, settings)
        _write_table(clean, tmp / name)
        with open(tmp / REPORT, "w") as f:
            json.dump(report, f, indent=2)
    return out_dir / name, report


def anonymize_tables(
    config: Config, folder: str | os.PathLike[str], log: Any = None, **tables: Any
) -> dict[str, Path | None]:
    """Anonymize each given table (path or DataFrame; None stays None) into FOLDER/<name>/ with the `privacy`
    section of a config tree; returns the new tables' paths. `log(message)` hears the counts, never values."""
    p = config.privacy
    settings = PrivacySettings(
        operator=p.operator, ner_model=p.ner_model, faces=p.faces, voice=p.voice, alpha=p.alpha,
        alpha_range=None if p.alpha_range is None else tuple(p.alpha_range), seed=p.seed,
        modalities=dict(config.data.modalities),
    )  # fmt: skip
    out: dict[str, Path | None] = {}
    for name, table in tables.items():
        if table is None:
            out[name] = None
            continue
        path, report = anonymize_table(table, Path(folder) / name, settings)
        if log is not None:
            found = ", ".join(f"{k} {v}" for k, v in report["entities"].items()) or "nothing"
            log(f"anonymized the {name} table ({report['rows']} rows; found: {found}) -> {path}")
        out[name] = path
    return out
