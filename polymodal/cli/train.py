"""polymodal fit / evaluate / predict / info: one model, trained, scored, used and described."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from polymodal.cli.base import _modalities, _run, _set_options, _settings, console, err
from polymodal.cli.options import (
    Accelerator,
    Anonymize,
    AudioCols,
    AudioEncoder,
    BatchSize,
    CacheDir,
    CategoricalCols,
    ConfigOpt,
    EmbedDim,
    Finetune,
    FusionOpt,
    GroupBy,
    IgnoreCols,
    ImageCols,
    ImageEncoder,
    ImageFit,
    ImageSize,
    LabelOpt,
    Lr,
    MaxEpochs,
    ModalityDropout,
    ModelFolder,
    ModelOutput,
    NerModel,
    NumericCols,
    OnBadRows,
    OnBadRowsFit,
    OnBadRowsPredict,
    Patience,
    Preset,
    PrivacyOperator,
    ProblemTypeOpt,
    Runtime,
    SampleRate,
    Seed,
    SetOpt,
    SplitBy,
    Streaming,
    TextCols,
    TextEncoder,
    TimeLimit,
    TrainTable,
    Valid,
    VideoCols,
)
from polymodal.cli.privacy import _personal_vocabulary
from polymodal.cli.retrieval import _retrieval_table


def checkpoint_folder(output: Path) -> Path:
    """Where `fit -o OUTPUT` keeps its training checkpoint: a hidden sibling of the output folder."""
    output = Path(output).absolute()
    return output.with_name(f".{output.name}.checkpoint")


def fit(
    train: TrainTable,
    output: ModelOutput,
    label: LabelOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    fusion: FusionOpt = None,
    valid: Valid = None,
    text: TextCols = None,
    image: ImageCols = None,
    audio: AudioCols = None,
    video: VideoCols = None,
    numeric: NumericCols = None,
    categorical: CategoricalCols = None,
    ignore: IgnoreCols = None,
    problem_type: ProblemTypeOpt = None,
    split_by: SplitBy = None,
    max_epochs: MaxEpochs = None,
    time_limit: TimeLimit = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    weight_decay: float | None = typer.Option(None, help="[1e-2]"),
    patience: Patience = None,
    seed: Seed = None,
    embed_dim: EmbedDim = None,
    image_size: ImageSize = None,
    image_fit: ImageFit = None,
    sample_rate: SampleRate = None,
    modality_dropout: ModalityDropout = None,
    on_bad_rows: OnBadRowsFit = None,
    accelerator: Accelerator = None,
    devices: str | None = typer.Option(None, help="Processes (devices) per machine, or 'auto' [1]"),
    strategy: str | None = typer.Option(None, help="ddp: one process per device, gradients all-reduced [auto]"),
    num_nodes: int | None = typer.Option(None, help="Machines of a multi-node run (torchrun/SLURM set it) [1]"),
    streaming: Streaming = None,
    precision: str | None = typer.Option(None, help="32-true | bf16-mixed | 16-mixed (fine-tuning on a GPU: bf16)"),
    text_encoder: TextEncoder = None,
    image_encoder: ImageEncoder = None,
    audio_encoder: AudioEncoder = None,
    preset: Preset = None,
    finetune: Finetune = None,
    finetune_layers: int | None = typer.Option(None, help="With --finetune: train only the top N layers"),
    lora: bool | None = typer.Option(None, "--lora", help="With --finetune: train LoRA adapters instead"),
    encoder_lr: float | None = typer.Option(None, help="Learning rate of fine-tuned encoders (default: lr / 10)"),
    refit: bool | None = typer.Option(
        None, "--refit", help="Then train again on training + validation rows for the epochs validation chose"
    ),
    cache_dir: CacheDir = None,
    anonymize: Anonymize = None,
    privacy_operator: PrivacyOperator = None,
    ner_model: NerModel = None,
    restart: bool = typer.Option(
        False, help="Start over instead of resuming from the checkpoint a killed run of this fit left beside -o"
    ),
) -> None:
    """Train a fused model on a table and save it to a folder.

    Every setting has a dotted path in the config tree (`polymodal config` lists them): give a YAML file with
    --config, then flags and --set PATH=VALUE override it. A checkpoint is written after each epoch to
    .NAME.checkpoint/ beside the output folder NAME; running the same command again after a crash or a kill resumes
    from it. It is removed once the model folder is written."""
    from polymodal.evaluation.table import metrics_table
    from polymodal.predictor import MultimodalPredictor

    def go():
        modalities = _modalities(text=text, image=image, audio=audio, video=video, numeric=numeric,
                                 categorical=categorical)  # fmt: skip
        settings = _settings(
            label=label, fusion=fusion, problem_type=problem_type, ignore=ignore,
            modalities=modalities,
            max_epochs=max_epochs, time_limit=time_limit, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            patience=patience, seed=seed, embed_dim=embed_dim, modality_dropout=modality_dropout,
            on_bad_rows=on_bad_rows, accelerator=accelerator, precision=precision, text_encoder=text_encoder,
            image_encoder=image_encoder, audio_encoder=audio_encoder, preset=preset, finetune_layers=finetune_layers,
            lora=lora, encoder_lr=encoder_lr, refit=refit, cache_dir=cache_dir,
            devices=None if devices is None else int(devices) if devices.isdigit() else devices,
            strategy=strategy, num_nodes=num_nodes,
            freeze=None if finetune is None else not finetune,
            **{"data.streaming": streaming, "data.split_by": split_by, "preprocess.image_size": image_size,
               "preprocess.image_fit": image_fit,
               "preprocess.sample_rate": sample_rate, "privacy.anonymize": anonymize,
               "privacy.operator": privacy_operator, "privacy.ner_model": ner_model},
        ) | _set_options(set_)  # fmt: skip
        p = MultimodalPredictor(config=config, **settings)
        if p.config_.privacy.anonymize and p.config_.privacy.output_dir is None:
            p.config_.privacy.output_dir = str(output.parent / f"{output.name}.anonymized")  # kept beside the model
        p.train_config.checkpoint_dir = str(checkpoint_folder(output))
        p.train_config.restart = restart
        p.fit(train, valid)
        folder = p.save(output)
        if getattr(p, "rank_", 0) != 0:  # another process of a distributed run: rank 0 reports and writes
            return
        console.print(metrics_table({f"{p.fusion} (validation)": p.metrics_["valid"]}, title="validation metrics"))
        if "refit" in p.metrics_:
            r = p.metrics_["refit"]
            console.print(f"refit on all {r['rows']} rows for {r['epochs']} epochs (the scores above: before it)")
        if p.dropped_:
            console.print(f"[yellow]dropped {len(p.dropped_)} bad row(s); report: {folder / 'dropped_rows.csv'}[/]")
        console.print(f"saved model to {folder}")

    _run(go)


def evaluate(
    model: ModelFolder,
    table: Path = typer.Argument(..., help="Labelled table to evaluate on"),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="metrics.json to write (default: MODEL/metrics.json)"
    ),
    on_bad_rows: OnBadRows = "error",
    runtime: Runtime = "torch",
    group_by: GroupBy = None,
    streaming: Streaming = None,
) -> None:
    """Metrics of a saved model on a labelled table; writes them to metrics.json."""
    from polymodal.evaluation.table import confusion_table, metrics_table
    from polymodal.model.artifact import METRICS, read_json, write_json
    from polymodal.predictor import MultimodalPredictor

    def go():
        from polymodal.retrieval.retriever import MultimodalRetriever, is_aligned_folder

        if is_aligned_folder(model):  # an aligned model: retrieval metrics in both directions
            r = MultimodalRetriever.load(model)
            r.on_bad_rows = on_bad_rows
            m = r.evaluate(table) | {"table": str(table)}
            console.print(_retrieval_table(m, f"retrieval on {table}"))
        else:
            p = MultimodalPredictor.load(model, runtime=runtime)
            p.config_.data.on_bad_rows = on_bad_rows
            if streaming is not None:
                p.config_.data.streaming = streaming
            m = p.evaluate(table, group_by=group_by) | {"table": str(table)}
            m |= {"runtime": runtime} if runtime != "torch" else {}
            groups = {f"{m['group_by']}={g}": v for g, v in m.get("groups", {}).items()}
            console.print(metrics_table({p.fusion: m} | groups, title=f"metrics on {table}"))
            if "confusion_matrix" in m:
                console.print(confusion_table(m["confusion_matrix"], p.engine.task.classes))
        if output is not None:
            write_json(output, m)
            console.print(f"wrote {output}")
        elif model.is_file():  # an exported graph: its metrics go beside it
            write_json(model.with_suffix(".metrics.json"), m)
            console.print(f"wrote {model.with_suffix('.metrics.json')}")
        else:
            path = model / METRICS
            saved = read_json(path) if path.exists() else {}
            saved["test"] = m
            write_json(path, saved)
            console.print(f"wrote {path} (key 'test')")

    _run(go)


def predict(
    model: ModelFolder,
    table: Path = typer.Argument(..., help="Table to predict (the label column is not needed)"),
    output: Path = typer.Option(
        ..., "--output", "-o", help="CSV to write: the input columns, prediction, probabilities"
    ),
    on_bad_rows: OnBadRowsPredict = "error",
    runtime: Runtime = "torch",
    streaming: Streaming = None,
    beam_size: int | None = typer.Option(None, help="Text models: beam size (1: greedy; default: the model's)"),
    n_best: int | None = typer.Option(None, help="Text models: hypotheses per row, with scores (text_1, score_1...)"),
) -> None:
    """Predict labels (and class probabilities) for every row of a table. A streamed table is read, predicted
    and written chunk by chunk."""
    from polymodal.predictor import MultimodalPredictor

    def go():
        from contextlib import nullcontext

        p = MultimodalPredictor.load(model, runtime=runtime)
        if streaming is not None:
            p.config_.data.streaming = streaming
        generation = {k: v for k, v in {"beam_size": beam_size, "n_best": n_best}.items() if v is not None}
        if generation:
            from polymodal.tasks.text import engine_generation

            context = engine_generation(p.engine, generation)
        else:
            context = nullcontext()
        with context:
            n = p.predict_file(table, output, on_bad_rows=on_bad_rows)
        console.print(f"wrote {n} predictions to {output}")

    _run(go)


def info(
    model: ModelFolder,
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON"),
) -> None:
    """Schema, encoders, fusion, parameter count and metrics of a saved model."""
    from rich.table import Table

    from polymodal.evaluation.table import metrics_table
    from polymodal.predictor import MultimodalPredictor

    def go():
        p = MultimodalPredictor.load(model)
        i = p.info()
        personal = _personal_vocabulary(p)
        if as_json:
            i["personal_vocabulary"] = personal
            sys.stdout.write(json.dumps(i, indent=2, default=str) + "\n")
            return
        t = Table(title=f"{model}: {i['fusion']} fusion, {i['task']['problem_type']}, label {i['label']!r}")
        for c in ("input", "modality", "encoder", "parameters"):
            t.add_column(c)
        for name, enc in i["encoders"].items():
            t.add_row(name, enc["modality"], enc["class"], f"{i['parameters_by_part'][name]:,}")
        t.add_row("fusion", "", i["fusion"], f"{i['parameters_by_part']['fusion']:,}")
        t.add_row("head", "", "", f"{i['parameters_by_part']['head']:,}")
        t.add_row("total", "", "", f"{i['parameters']:,}")
        console.print(t)
        rows = {k: v for k, v in i["metrics"].items() if isinstance(v, dict) and ("accuracy" in v or "rmse" in v)}
        if rows:
            console.print(metrics_table(rows, title="metrics"))
        for col, counts in personal.items():
            found = ", ".join(f"{k} {v}" for k, v in counts.items())
            err.print(
                f"[yellow]warning:[/] the vocabulary of {col!r} holds entries that look personal ({found}): this "
                "model folder carries them wherever it goes. Retrain with --anonymize.",
                highlight=False,
            )

    _run(go)
