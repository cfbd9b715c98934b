"""The report sections of a text model: the best and worst test rows side by side with their inputs (image
thumbnails, audio players, the input text), the reference and the generated text, and each row's error."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.data.schema import Modality, Schema
from polymodal.evaluation.html import esc, note

THUMB = 96  # pixels: the longer side of an image thumbnail
MAX_AUDIO_BYTES = 400_000  # a longer clip is named, not embedded


def row_errors(task: Any, refs: list[str], hyps: list[str]) -> np.ndarray:
    """Each row's error: its WER (CER for a character vocabulary), with the metrics' normalisation."""
    from polymodal.tasks.text_metrics import cer, wer

    rate = cer if task.vocabulary.level == "char" else wer
    norm = task._norm()
    return np.array([rate([r], [h], **norm) for r, h in zip(refs, hyps, strict=True)])


def _thumbnail(path: Path) -> str:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except OSError:
        return esc(f"(unreadable: {path.name})")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{esc(path.name)}" style="display:inline;margin:0" src="data:image/png;base64,{data}">'


def _player(path: Path) -> str:
    if not path.is_file() or path.stat().st_size > MAX_AUDIO_BYTES:
        return esc(path.name)
    kind = {".wav": "wav", ".flac": "flac", ".ogg": "ogg", ".mp3": "mpeg"}.get(path.suffix.lower(), "wav")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<audio controls preload="none" src="data:audio/{kind};base64,{data}"></audio>'


def _cell(value: Any, modality: Modality, base_dir: Path) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return '<span class="note">absent</span>'
    if modality is Modality.IMAGE:
        return _thumbnail(base_dir / str(value))
    if modality is Modality.AUDIO:
        return _player(base_dir / str(value))
    return esc(value)


def examples_section(task: Any, schema: Schema, df: pd.DataFrame, base_dir: Path, outputs: np.ndarray,
                     k: int = 5) -> str:  # fmt: skip
    """The `k` best and `k` worst rows by their error, with their inputs, reference and generated text."""
    refs = ["" if pd.isna(v) else str(v) for v in df[schema.label]]
    hyps = [str(h) for h in task.decode(outputs)]
    errors = row_errors(task, refs, hyps)
    order = np.argsort(errors, kind="stable")
    unit = "CER" if task.vocabulary.level == "char" else "WER"
    cols = list(schema.columns)
    head = "".join(f'<th class="l">{esc(c)}</th>' for c in ["row", *cols, "reference", "generated", unit])
    body = []
    for title, rows in (("best", order[:k]), ("worst", order[::-1][:k])):
        body.append(f'<tr><td class="l" colspan="{len(cols) + 4}"><b>{title}</b></td></tr>')
        for i in rows:
            cells = [_cell(df[c].iloc[i], schema.columns[c], base_dir) for c in cols]
            cells += [esc(refs[i]), esc(hyps[i]), f"{errors[i]:.3f}"]
            body.append(
                f'<tr><td class="l">{int(i)}</td>' + "".join(f'<td class="l">{c}</td>' for c in cells) + "</tr>"
            )
    return (
        note(f"the {k} rows with the lowest and the highest {unit} of the generated text (normalised as the metrics)")
        + f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    )


def text_headline(task: Any) -> Any:
    """The bootstrap's headline metrics of a text model: its monitored metric and exact match."""
    from polymodal.tasks.text_metrics import exact_match

    name = task.monitor[0]

    def headline(t: np.ndarray, o: np.ndarray) -> dict[str, float]:
        refs = [task.vocabulary.decode(x) for x in t]
        return {name: task.score(t, o), "exact_match": exact_match(refs, list(task.decode(o)), **task._norm())}

    return headline
