"""polymodal anonymize: an anonymized copy of a table; and the check `info` makes of a model's vocabularies."""

from __future__ import annotations

from pathlib import Path

import typer

from polymodal.cli.base import _modalities, _run, console
from polymodal.cli.options import AudioCols, ImageCols, NerModel, PrivacyOperator, TextCols, VideoCols


def _personal_vocabulary(predictor) -> dict[str, dict[str, int]]:
    """Per input (and the label's classes), how many vocabulary entries look personal: counts, never values."""
    from polymodal.data.schema import CATEGORICAL_INPUT, Modality
    from polymodal.privacy.text import personal_vocabulary

    engine = predictor.engine
    state = engine.preprocessor.state
    vocabularies = {c: state[c].get("vocab", []) for c in engine.schema.columns_of(Modality.TEXT) if c in state}
    if CATEGORICAL_INPUT in state:
        vocabularies |= dict(zip(state[CATEGORICAL_INPUT]["columns"], state[CATEGORICAL_INPUT]["vocabs"], strict=True))
    if engine.task.classes:
        vocabularies[f"{engine.schema.label} (label classes)"] = [str(c) for c in engine.task.classes]
    found = {col: personal_vocabulary(words) for col, words in vocabularies.items() if words}
    return {col: counts for col, counts in found.items() if counts}


def anonymize(
    table: Path = typer.Argument(..., help="Table to anonymize: .csv, .tsv, .parquet or .jsonl (only read)"),
    output: Path = typer.Option(..., "--output", "-o", help="New folder: the clean table, media/, and the report"),
    operator: PrivacyOperator = "placeholder",
    ner_model: NerModel = None,
    entities: str | None = typer.Option(None, help="Comma-separated entity types (default: every pattern type)"),
    threshold: float = typer.Option(0.4, help="Presidio score a match needs to count"),
    faces: str = typer.Option("blur", help="blur | box | keep: what happens to faces in images"),
    voice: str = typer.Option("mcadams", help="mcadams | keep: what happens to voices in audio"),
    alpha: float = typer.Option(0.8, help="McAdams coefficient"),
    alpha_range: str | None = typer.Option(None, help="LOW,HIGH: a random McAdams coefficient per recording"),
    seed: int = typer.Option(0, help="Seed of the per-recording coefficients"),
    text: TextCols = None,
    image: ImageCols = None,
    audio: AudioCols = None,
    video: VideoCols = None,
) -> None:
    """Write an anonymized copy of a table: personal data in text replaced, faces blurred, voices changed,
    image, audio and video metadata dropped (a video: faces blurred in every frame, its voice changed);
    plus anonymization_report.json (counts per entity type and column)."""
    from polymodal.privacy import PrivacySettings, anonymize_table

    def go():
        rng = None
        if alpha_range:
            lo, _, hi = alpha_range.partition(",")
            rng = (float(lo), float(hi))
        settings = PrivacySettings(
            operator=operator, ner_model=ner_model, entities=entities.split(",") if entities else None,
            threshold=threshold, faces=faces, voice=voice, alpha=alpha, alpha_range=rng, seed=seed,
            modalities=_modalities(text=text, image=image, audio=audio, video=video) or {},
        )  # fmt: skip
        path, report = anonymize_table(table, output, settings)
        from rich.table import Table

        t = Table(title=f"anonymized {report['rows']} rows -> {path}")
        for c in ("column", "modality", "found"):
            t.add_column(c)
        for col, entry in report["columns"].items():
            found = entry.get("entities") or ({"FACE": entry["faces"]} if "faces" in entry else {})
            what = ", ".join(f"{k} {v}" for k, v in found.items()) or (
                f"{entry['files']} file(s), voice: {entry['voice']}" if "voice" in entry else "-"
            )
            t.add_row(col, entry["modality"], what)
        console.print(t)
        console.print(f"report: {output / 'anonymization_report.json'}")

    _run(go)
