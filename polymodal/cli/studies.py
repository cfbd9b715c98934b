"""polymodal compare / report: a leaderboard of many models, and the HTML report of one model or one leaderboard."""

from __future__ import annotations

from pathlib import Path

import typer

from polymodal.cli.base import _fail, _modalities, _run, _set_options, _settings, console, err
from polymodal.cli.options import (
    AcceleratorTerse,
    Anonymize,
    AudioCols,
    AudioEncoder,
    BatchSize,
    CacheDir,
    CategoricalCols,
    ConfigOpt,
    EmbedDimTerse,
    Finetune,
    GroupBy,
    IgnoreCols,
    ImageCols,
    ImageEncoder,
    ImageFit,
    ImageSize,
    LabelOpt,
    LrTerse,
    MaxEpochsTerse,
    ModalityDropout,
    NerModel,
    NoiseLevels,
    NoiseRows,
    NumericCols,
    OnBadRows,
    PatienceTerse,
    Preset,
    PrivacyOperator,
    ProblemTypeOpt,
    SampleRate,
    SetOpt,
    SplitBy,
    Streaming,
    TextCols,
    TextEncoder,
    TimeLimitCompare,
    TrainTable,
    ValidCompare,
    VideoCols,
)


def compare(
    train: TrainTable,
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the leaderboard, report and models"),
    label: LabelOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    test: Path | None = typer.Option(None, help="Test table (default: a stratified 20 % split of train)"),
    valid: ValidCompare = None,
    fusions: str = typer.Option("all", help="'all' or a comma-separated list, e.g. early,gmu,ensemble-stack"),
    seeds: int = typer.Option(3, help="Seeds per entry (mean and std over them)"),
    time_limit: TimeLimitCompare = None,
    noise_levels: NoiseLevels = 5,
    noise_rows: NoiseRows = 1000,
    text: TextCols = None,
    image: ImageCols = None,
    audio: AudioCols = None,
    video: VideoCols = None,
    numeric: NumericCols = None,
    categorical: CategoricalCols = None,
    ignore: IgnoreCols = None,
    problem_type: ProblemTypeOpt = None,
    max_epochs: MaxEpochsTerse = None,
    batch_size: BatchSize = None,
    lr: LrTerse = None,
    patience: PatienceTerse = None,
    embed_dim: EmbedDimTerse = None,
    image_size: ImageSize = None,
    image_fit: ImageFit = None,
    sample_rate: SampleRate = None,
    modality_dropout: ModalityDropout = None,
    on_bad_rows: OnBadRows = None,
    accelerator: AcceleratorTerse = None,
    text_encoder: TextEncoder = None,
    image_encoder: ImageEncoder = None,
    audio_encoder: AudioEncoder = None,
    preset: Preset = None,
    finetune: Finetune = None,
    cache_dir: CacheDir = None,
    anonymize: Anonymize = None,
    privacy_operator: PrivacyOperator = None,
    ner_model: NerModel = None,
    group_by: GroupBy = None,
    split_by: SplitBy = None,
    cv: str | None = typer.Option(
        None, help="groups: leave-groups-out folds over --split-by instead of seeds (mean and spread over groups)"
    ),
    streaming: Streaming = None,
) -> None:
    """Leaderboard of unimodal baselines, fusions and ensembles over seeds, with robustness and an HTML report.

    Re-running the same command skips the entries that finished. Model settings: --config/--set as in `fit`.
    A streamed table (larger than memory) trains each entry as a streamed fit and scores every test row chunk by
    chunk; its robustness columns are measured on --noise-rows test rows."""
    from polymodal.studies.compare import compare as run_compare
    from polymodal.studies.leaderboard import leaderboard_table
    from polymodal.studies.tune import parse_duration

    def go():
        modalities = _modalities(text=text, image=image, audio=audio, video=video, numeric=numeric,
                                 categorical=categorical)  # fmt: skip
        settings = _settings(
            config=config, problem_type=problem_type, ignore=ignore,
            modalities=modalities,
            embed_dim=embed_dim, max_epochs=max_epochs, batch_size=batch_size, lr=lr, patience=patience,
            modality_dropout=modality_dropout, on_bad_rows=on_bad_rows, accelerator=accelerator,
            text_encoder=text_encoder, image_encoder=image_encoder, audio_encoder=audio_encoder, preset=preset,
            cache_dir=cache_dir, freeze=None if finetune is None else not finetune,
            **{"preprocess.image_size": image_size, "preprocess.image_fit": image_fit,
               "preprocess.sample_rate": sample_rate, "privacy.anonymize": anonymize,
               "privacy.operator": privacy_operator, "privacy.ner_model": ner_model, "data.group_by": group_by,
               "data.split_by": split_by, "data.streaming": streaming},
        ) | _set_options(set_)  # fmt: skip
        board = run_compare(
            train, label, output, test=test, valid=valid, fusions=fusions, seeds=seeds, noise_levels=noise_levels,
            time_limit=parse_duration(time_limit), log_fn=lambda m: console.print(m, highlight=False),
            noise_rows=noise_rows, cv=cv, **settings,
        )  # fmt: skip
        console.print(leaderboard_table(board))
        console.print(f"wrote {output / 'leaderboard.csv'}, {output / 'leaderboard.json'}, {output / 'report.html'}")

    try:
        _run(go)
    except KeyboardInterrupt:
        err.print("interrupted: run the same command again to resume (finished entries are kept)")
        raise typer.Exit(code=130) from None


def report(
    model: Path = typer.Argument(..., help="Model folder (or a compare folder, to redraw its report)"),
    table: Path | None = typer.Argument(None, help="Labelled table to evaluate on (not needed for a compare folder)"),
    output: Path = typer.Option(..., "--output", "-o", help="HTML file to write"),
    noise_levels: NoiseLevels = 5,
    noise_rows: NoiseRows = 1000,
    group_by: GroupBy = None,
) -> None:
    """A self-contained HTML report: metrics, robustness, modality contribution, confusion matrix, ROC, curves."""
    from polymodal.evaluation.html import write_html
    from polymodal.evaluation.report import model_report
    from polymodal.studies.report import compare_report

    def go():
        if (model / "leaderboard.json").exists():
            html = compare_report(model)
        else:
            if table is None:
                _fail("give a labelled table to evaluate the model on: polymodal report MODEL TABLE -o report.html")
            from polymodal.model.artifact import METRICS, read_json
            from polymodal.retrieval.retriever import is_aligned_folder
            from polymodal.studies.ensemble import EnsembleModel, is_ensemble_folder

            if is_aligned_folder(model):
                from polymodal.retrieval.report import retrieval_report

                write_html(output, retrieval_report(model, table))
                console.print(f"wrote {output}")
                return
            if is_ensemble_folder(model):
                engine, history = EnsembleModel.load(model), None
            else:
                from polymodal.predictor import MultimodalPredictor

                p = MultimodalPredictor.load(model)
                engine, history = p.engine, p.metrics_.get("history")
            if history is None and (model / METRICS).exists():
                history = read_json(model / METRICS).get("history")
            groups = group_by or (None if is_ensemble_folder(model) else p.config_.data.group_by)
            html = model_report(
                engine, table, name=str(model), history=history, noise_levels=noise_levels, noise_rows=noise_rows,
                group_by=groups,
            )  # fmt: skip
        write_html(output, html)
        console.print(f"wrote {output}")

    _run(go)
