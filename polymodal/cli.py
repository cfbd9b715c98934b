"""The `polymodal` command line. Each verb is a thin call into `MultimodalPredictor`; heavy imports happen inside."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train, evaluate and use fused multimodal models.")
# Wide enough for the metric tables when output goes to a file or a pipe (rich would default to 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


# Options that several commands share, declared once.
TextCols = Annotated[list[str] | None, typer.Option("--text", help="Treat this column as text (repeatable)")]
ImageCols = Annotated[list[str] | None, typer.Option("--image", help="Treat this column as image paths (repeatable)")]
AudioCols = Annotated[list[str] | None, typer.Option("--audio", help="Treat this column as audio paths (repeatable)")]
NumericCols = Annotated[list[str] | None, typer.Option("--numeric", help="Treat this column as numeric (repeatable)")]
CategoricalCols = Annotated[
    list[str] | None, typer.Option("--categorical", help="Treat this column as categorical (repeatable)")
]
IgnoreCols = Annotated[list[str] | None, typer.Option("--ignore", help="Leave this column out (repeatable)")]
ProblemTypeOpt = Annotated[str | None, typer.Option(help="binary | multiclass | regression (default: inferred)")]
ImageFit = Annotated[str | None, typer.Option(help="squash: resize to the square | pad: keep the aspect ratio")]
TextEncoder = Annotated[str | None, typer.Option(help="Pretrained text encoder: registry name, HF id or folder")]
ImageEncoder = Annotated[str | None, typer.Option(help="Pretrained image encoder: registry name, HF id or folder")]
AudioEncoder = Annotated[str | None, typer.Option(help="Pretrained audio encoder: HF id or folder")]
Preset = Annotated[str | None, typer.Option(help="pretrained: the offline defaults (see `polymodal encoders`)")]
CacheDir = Annotated[Path | None, typer.Option(help="Feature cache of frozen encoders (default: ~/.cache/polymodal)")]
NoiseLevels = Annotated[int, typer.Option(help="Noise levels per modality for robustness (0: skip the noise)")]
Runtime = Annotated[
    str, typer.Option(help="torch: the model folder | onnx: an exported .onnx (or a folder with model.onnx)")
]
NoiseRows = Annotated[int, typer.Option(help="Measure the noise curves on a fixed sample of this many test rows")]
Anonymize = Annotated[
    bool | None,
    typer.Option(
        "--anonymize",
        help="Anonymize the tables first (text, faces, voices) into OUTPUT.anonymized/ and train on that copy",
    ),
]
PrivacyOperator = Annotated[
    str | None,
    typer.Option(help="placeholder: <EMAIL_ADDRESS> | mask: ***** | hash: salted, from $POLYMODAL_PRIVACY_SALT"),
]
NerModel = Annotated[
    str | None, typer.Option(help="Token-classification model (HF id or folder) for names, places, organizations")
]
GroupBy = Annotated[
    str | None,
    typer.Option(help="A column naming groups of rows (e.g. question type): metrics per value too (data.group_by)"),
]

Streaming = Annotated[
    str | None,
    typer.Option(help="on: read the table in chunks (larger than memory) | off: all in memory | auto (data.streaming)"),
]


LabelOpt = Annotated[str | None, typer.Option("--label", "-y", help="The column to predict (data.label)")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Config tree (YAML or JSON); flags and --set override it")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Any setting by dotted path: --set train.lr=3e-4 (repeatable; `polymodal config`)"),
]
FusionOpt = Annotated[
    str | None,
    typer.Option(
        help="early | late | attention | gmu | tensor | low_rank | cross_attention; token-level: relation | film | "
        "token_transformer [attention]"
    ),
]
ImageSize = Annotated[int | None, typer.Option(help="Images are resized to this square size [64]")]
SampleRate = Annotated[int | None, typer.Option(help="Audio is resampled to this rate [16000]")]
ModalityDropout = Annotated[float | None, typer.Option(help="Hide each modality with this probability in training [0]")]
Finetune = Annotated[
    bool | None, typer.Option("--finetune/--freeze", help="Fine-tune pretrained encoders, or freeze them [freeze]")
]


def checkpoint_folder(output: Path) -> Path:
    """Where `fit -o OUTPUT` keeps its training checkpoint: a hidden sibling of the output folder."""
    output = Path(output).absolute()
    return output.with_name(f".{output.name}.checkpoint")


def _modalities(**columns: list[str] | None) -> dict[str, str] | None:
    """The column -> modality overrides given with --text/--image/--audio/--numeric/--categorical."""
    return {c: modality for modality, cols in columns.items() for c in cols or []} or None


def _settings(**flags: object) -> dict[str, object]:
    """The flags the user gave (None: not given, so the config file or the default stands)."""
    return {k: v for k, v in flags.items() if v is not None and v != []}


def _set_options(sets: list[str] | None) -> dict[str, object]:
    """--set PATH=VALUE pairs as {dotted path: value of the setting's type}."""
    from polymodal.config import ConfigError, parse_value

    out: dict[str, object] = {}
    for item in sets or []:
        path, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"--set takes PATH=VALUE (e.g. train.lr=3e-4), not {item!r}")
        out[path.strip()] = parse_value(path.strip(), text.strip())
    return out


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


def _run(fn):
    """Errors a user can fix (`UserError`: bad rows, unknown columns, bad options; a missing file) become a message
    and exit code 2. Anything else is a bug: say so, keep the traceback in a file, and exit with code 3."""
    import click

    from polymodal.errors import UserError

    try:
        return fn()
    except (UserError, FileNotFoundError) as e:
        _fail(str(e))
    except (typer.Exit, click.exceptions.Exit, click.exceptions.Abort, click.ClickException, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - the last resort: report the bug instead of a bare traceback
        _internal_error(e)


DEBUG_ENV = "POLYMODAL_DEBUG"


def _internal_error(e: Exception) -> None:
    """Report an unexpected exception as a bug: one line, the traceback in a file (and on screen with --debug)."""
    import os
    import tempfile
    import time
    import traceback

    trace = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    fd, path = tempfile.mkstemp(prefix=f"polymodal-crash-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(f"polymodal {' '.join(sys.argv[1:])}\n\n{trace}")
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        err.print(trace, highlight=False, markup=False)
    err.print(
        f"[bold red]internal error (a bug in polymodal):[/] {type(e).__name__}: {e}\n"
        f"traceback written to {path} (shown here with --debug or {DEBUG_ENV}=1); please report it with that file.",
        highlight=False,
    )
    raise typer.Exit(code=3)


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help=f"Print the traceback of internal errors (or {DEBUG_ENV}=1)"),
) -> None:
    """Train, evaluate and use fused multimodal models."""
    import os

    if debug:
        os.environ[DEBUG_ENV] = "1"


@app.command()
def fit(
    train: Path = typer.Argument(..., help="Training table: .csv, .tsv, .parquet or .jsonl"),
    output: Path = typer.Option(..., "--output", "-o", help="Model folder to write"),
    label: LabelOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    fusion: FusionOpt = None,
    valid: Path | None = typer.Option(None, help="Validation table (default: a stratified 10 % split of train)"),
    text: TextCols = None,
    image: ImageCols = None,
    audio: AudioCols = None,
    numeric: NumericCols = None,
    categorical: CategoricalCols = None,
    ignore: IgnoreCols = None,
    problem_type: ProblemTypeOpt = None,
    max_epochs: int | None = typer.Option(None, help="Upper bound on epochs; early stopping usually ends sooner [30]"),
    batch_size: int | None = typer.Option(None, help="[64]"),
    lr: float | None = typer.Option(None, help="AdamW learning rate [1e-3]"),
    weight_decay: float | None = typer.Option(None, help="[1e-2]"),
    patience: int | None = typer.Option(None, help="Epochs without improvement before early stopping [6]"),
    seed: int | None = typer.Option(None, help="[0]"),
    embed_dim: int | None = typer.Option(None, help="Embedding size of every encoder [128]"),
    image_size: ImageSize = None,
    image_fit: ImageFit = None,
    sample_rate: SampleRate = None,
    modality_dropout: ModalityDropout = None,
    on_bad_rows: str | None = typer.Option(None, help="error: stop, list bad rows | skip: drop them, write a report"),
    accelerator: str | None = typer.Option(None, help="auto | cpu | gpu [auto]"),
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
        modalities = _modalities(text=text, image=image, audio=audio, numeric=numeric, categorical=categorical)
        settings = _settings(
            label=label, fusion=fusion, problem_type=problem_type, ignore=ignore,
            modalities=modalities,
            max_epochs=max_epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience,
            seed=seed, embed_dim=embed_dim, modality_dropout=modality_dropout, on_bad_rows=on_bad_rows,
            accelerator=accelerator, precision=precision, text_encoder=text_encoder, image_encoder=image_encoder,
            audio_encoder=audio_encoder, preset=preset, finetune_layers=finetune_layers, lora=lora,
            encoder_lr=encoder_lr, cache_dir=cache_dir,
            devices=None if devices is None else int(devices) if devices.isdigit() else devices,
            strategy=strategy, num_nodes=num_nodes,
            freeze=None if finetune is None else not finetune,
            **{"data.streaming": streaming, "preprocess.image_size": image_size, "preprocess.image_fit": image_fit,
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
        if p.dropped_:
            console.print(f"[yellow]dropped {len(p.dropped_)} bad row(s); report: {folder / 'dropped_rows.csv'}[/]")
        console.print(f"saved model to {folder}")

    _run(go)


@app.command("config")
def config_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the YAML here instead of printing it"),
    paths: bool = typer.Option(False, "--paths", help="List every setting's dotted path and type"),
) -> None:
    """Print the config tree (defaults, or a file with --set overrides applied) as YAML, checked."""
    from polymodal.config import Config, build_config

    def go():
        if paths:
            from polymodal.config import leaf_type

            for path in Config.paths():
                t = leaf_type(path)
                sys.stdout.write(f"{path}\t{getattr(t, '__name__', None) or str(t).replace('typing.', '')}\n")
            return
        cfg = build_config(config, **_set_options(set_))
        text = cfg.to_yaml(output)
        if output is None:
            sys.stdout.write(text)
        else:
            console.print(f"wrote {output}")

    _run(go)


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="Model folder"),
    table: Path = typer.Argument(..., help="Labelled table to evaluate on"),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="metrics.json to write (default: MODEL/metrics.json)"
    ),
    on_bad_rows: str = typer.Option("error", help="error | skip"),
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


@app.command()
def predict(
    model: Path = typer.Argument(..., help="Model folder"),
    table: Path = typer.Argument(..., help="Table to predict (the label column is not needed)"),
    output: Path = typer.Option(
        ..., "--output", "-o", help="CSV to write: the input columns, prediction, probabilities"
    ),
    on_bad_rows: str = typer.Option("error", help="error | missing (treat a broken file as an absent modality)"),
    runtime: Runtime = "torch",
    streaming: Streaming = None,
) -> None:
    """Predict labels (and class probabilities) for every row of a table. A streamed table is read, predicted
    and written chunk by chunk."""
    from polymodal.predictor import MultimodalPredictor

    def go():
        p = MultimodalPredictor.load(model, runtime=runtime)
        if streaming is not None:
            p.config_.data.streaming = streaming
        n = p.predict_file(table, output, on_bad_rows=on_bad_rows)
        console.print(f"wrote {n} predictions to {output}")

    _run(go)


@app.command()
def info(
    model: Path = typer.Argument(..., help="Model folder"),
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


@app.command()
def encoders() -> None:
    """List the encoders: offline pretrained defaults (and whether they are installed), hub-cached models, scratch."""
    from rich.table import Table

    from polymodal.encoders.pretrained import list_encoders

    t = Table(title="encoders (any Hugging Face model id or local folder works too)")
    for c in ("name", "modality", "what", "installed"):
        t.add_column(c)
    for row in list_encoders():
        t.add_row(row["name"], row["modality"], row["what"], "yes" if row["installed"] else "no")
    console.print(t)


@app.command()
def demo(
    output: Path = typer.Option(Path("demo_out"), "--output", "-o", help="Folder for the data and the models"),
    max_epochs: int = typer.Option(30),
    n_train: int = typer.Option(1200),
    n_test: int = typer.Option(400),
) -> None:
    """Generate a small text+image+audio+tabular dataset offline, fit each fusion, print their test metrics."""
    from polymodal.demo_data import make_demo_data
    from polymodal.evaluation.table import metrics_table
    from polymodal.predictor import MultimodalPredictor

    train_csv, test_csv = make_demo_data(output / "data", n_train=n_train, n_test=n_test)
    console.print(f"demo data: {train_csv} ({n_train} rows), {test_csv} ({n_test} rows)")
    results = {}
    for fusion in ("early", "late", "attention"):
        console.rule(f"{fusion} fusion")
        p = MultimodalPredictor(
            label="digit", fusion=fusion, max_epochs=max_epochs, preprocess={"image_size": 32, "sample_rate": 8000}
        )
        p.fit(train_csv)
        p.save(output / f"model_{fusion}")
        results[fusion] = p.evaluate(test_csv) | {"train_s": p.metrics_["train_seconds"]}
    console.print(metrics_table(results, title="demo: test metrics by fusion", extra=["train_s"]))
    console.print(f"models in {output}/model_*; try: polymodal info {output}/model_attention")


@app.command()
def serve(
    model: Path = typer.Argument(..., help="Model folder"),
    host: str | None = typer.Option(None, help="Address to bind (default: 127.0.0.1, or 0.0.0.0 with an API key)"),
    port: int = typer.Option(8000),
    workers: int = typer.Option(1, help="Processes sharing the port, each with its own copy of the model"),
    max_batch_size: int = typer.Option(32, help="Rows per forward pass at most (1: micro-batching off)"),
    max_wait_ms: float = typer.Option(5.0, help="How long a request may wait for others to share its batch"),
    api_key_env: str | None = typer.Option(
        None,
        help="Environment variable holding the API key; every endpoint but /health and /ready then needs "
        "'Authorization: Bearer <key>'",
    ),
    public_docs: bool = typer.Option(
        False,
        help="With an API key: leave the page, /docs, /openapi.json and /metrics open to anyone (they show "
        "the model's columns and traffic); /v1 still needs the key",
    ),
    max_body_mb: float = typer.Option(16.0, help="Largest request body, in MiB"),
    max_instances: int = typer.Option(64, help="Instances per request at most"),
    max_image_pixels: int = typer.Option(16_777_216, help="Largest image (width x height), checked before decoding"),
    max_audio_seconds: float = typer.Option(60.0, help="Longest audio clip"),
    max_text_chars: int = typer.Option(10_000, help="Longest text value"),
    max_queue: int = typer.Option(512, help="Rows waiting for the model at most; beyond it requests get 429"),
    log_level: str = typer.Option("info", help="debug | info | warning | error"),
    runtime: Runtime = "torch",
) -> None:
    """Serve a model over HTTP: JSON and form prediction endpoints, metrics, and a page to try it at /."""
    from polymodal.serving import ServeConfig, resolve_host
    from polymodal.serving import serve as run_server

    def go():
        config = ServeConfig(
            model=str(model), max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, api_key_env=api_key_env,
            max_body_bytes=int(max_body_mb * 1024 * 1024), max_instances=max_instances,
            max_image_pixels=max_image_pixels, max_audio_seconds=max_audio_seconds, max_text_chars=max_text_chars,
            max_queue=max_queue, public_docs=public_docs, runtime=runtime,
        )  # fmt: skip
        bind, notice = resolve_host(host, api_key_env is not None)
        err.print(f"polymodal serve: {notice}; http://{bind}:{port}/", highlight=False)
        run_server(config, bind, port, workers, log_level)

    _run(go)


@app.command()
def compare(
    train: Path = typer.Argument(..., help="Training table: .csv, .tsv, .parquet or .jsonl"),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the leaderboard, report and models"),
    label: LabelOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    test: Path | None = typer.Option(None, help="Test table (default: a stratified 20 % split of train)"),
    valid: Path | None = typer.Option(None, help="Validation table (default: a 10 % split of train per seed)"),
    fusions: str = typer.Option("all", help="'all' or a comma-separated list, e.g. early,gmu,ensemble-stack"),
    seeds: int = typer.Option(3, help="Seeds per entry (mean and std over them)"),
    noise_levels: NoiseLevels = 5,
    noise_rows: NoiseRows = 1000,
    text: TextCols = None,
    image: ImageCols = None,
    audio: AudioCols = None,
    numeric: NumericCols = None,
    categorical: CategoricalCols = None,
    ignore: IgnoreCols = None,
    problem_type: ProblemTypeOpt = None,
    max_epochs: int | None = typer.Option(None, help="[30]"),
    batch_size: int | None = typer.Option(None, help="[64]"),
    lr: float | None = typer.Option(None, help="[1e-3]"),
    patience: int | None = typer.Option(None, help="[6]"),
    embed_dim: int | None = typer.Option(None, help="[128]"),
    image_size: ImageSize = None,
    image_fit: ImageFit = None,
    sample_rate: SampleRate = None,
    modality_dropout: ModalityDropout = None,
    on_bad_rows: str | None = typer.Option(None, help="error | skip"),
    accelerator: str | None = typer.Option(None, help="auto | cpu | gpu"),
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
    streaming: Streaming = None,
) -> None:
    """Leaderboard of unimodal baselines, fusions and ensembles over seeds, with robustness and an HTML report.

    Re-running the same command skips the entries that finished. Model settings: --config/--set as in `fit`.
    A streamed table (larger than memory) trains each entry as a streamed fit and scores every test row chunk by
    chunk; its robustness columns are measured on --noise-rows test rows."""
    from polymodal.evaluation.compare import compare as run_compare
    from polymodal.evaluation.compare import leaderboard_table

    def go():
        modalities = _modalities(text=text, image=image, audio=audio, numeric=numeric, categorical=categorical)
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
               "data.streaming": streaming},
        ) | _set_options(set_)  # fmt: skip
        board = run_compare(
            train, label, output, test=test, valid=valid, fusions=fusions, seeds=seeds, noise_levels=noise_levels,
            log_fn=lambda m: console.print(m, highlight=False), noise_rows=noise_rows, **settings,
        )  # fmt: skip
        console.print(leaderboard_table(board))
        console.print(f"wrote {output / 'leaderboard.csv'}, {output / 'leaderboard.json'}, {output / 'report.html'}")

    try:
        _run(go)
    except KeyboardInterrupt:
        err.print("interrupted: run the same command again to resume (finished entries are kept)")
        raise typer.Exit(code=130) from None


@app.command()
def report(
    model: Path = typer.Argument(..., help="Model folder (or a compare folder, to redraw its report)"),
    table: Path | None = typer.Argument(None, help="Labelled table to evaluate on (not needed for a compare folder)"),
    output: Path = typer.Option(..., "--output", "-o", help="HTML file to write"),
    noise_levels: NoiseLevels = 5,
    noise_rows: NoiseRows = 1000,
    group_by: GroupBy = None,
) -> None:
    """A self-contained HTML report: metrics, robustness, modality contribution, confusion matrix, ROC, curves."""
    from polymodal.evaluation.report import compare_report, model_report, write_html

    def go():
        if (model / "leaderboard.json").exists():
            html = compare_report(model)
        else:
            if table is None:
                _fail("give a labelled table to evaluate the model on: polymodal report MODEL TABLE -o report.html")
            from polymodal.evaluation.ensemble import EnsembleModel, is_ensemble_folder
            from polymodal.model.artifact import METRICS, read_json
            from polymodal.retrieval.retriever import is_aligned_folder

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


# ---- privacy: anonymize a table, or train on an anonymized copy ---------------------------------------------------
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


@app.command()
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
) -> None:
    """Write an anonymized copy of a table: personal data in text replaced, faces blurred, voices changed,
    image and audio metadata dropped; plus anonymization_report.json (counts per entity type and column)."""
    from polymodal.privacy import PrivacySettings, anonymize_table

    def go():
        rng = None
        if alpha_range:
            lo, _, hi = alpha_range.partition(",")
            rng = (float(lo), float(hi))
        settings = PrivacySettings(
            operator=operator, ner_model=ner_model, entities=entities.split(",") if entities else None,
            threshold=threshold, faces=faces, voice=voice, alpha=alpha, alpha_range=rng, seed=seed,
            modalities=_modalities(text=text, image=image, audio=audio) or {},
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


# ---- cross-modal retrieval: align, index, search, zero-shot ---------------------------------------------------
def _retrieval_errors(fn):
    """As `_run`, plus the retrieval errors a user can fix (an index from another model, a bad query)."""
    from polymodal.retrieval.index import IndexMismatch

    def go():
        try:
            return fn()
        except IndexMismatch as e:
            _fail(str(e))

    return _run(go)


@app.command()
def align(
    train: Path = typer.Argument(..., help="Training table: each row pairs the query and target columns"),
    output: Path = typer.Option(..., "--output", "-o", help="Model folder to write"),
    query: list[str] | None = typer.Option(
        None, "--query", "-q", help="Column to align with the target (repeatable; align.query)"
    ),
    target: str | None = typer.Option(None, "--target", "-t", help="The anchor column (align.target)"),
    label: str | None = typer.Option(None, "--label", "-y", help="Rows sharing this label are positives too"),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    valid: Path | None = typer.Option(None, help="Validation table (default: a 10 % split of train)"),
    text: TextCols = None,
    image: ImageCols = None,
    audio: AudioCols = None,
    max_epochs: int | None = typer.Option(None, help="[30]"),
    batch_size: int | None = typer.Option(None, help="Rows per batch: the in-batch negatives [64]"),
    lr: float | None = typer.Option(None, help="[1e-3]"),
    patience: int | None = typer.Option(None, help="Epochs without a better validation recall@1 before stopping [6]"),
    seed: int | None = typer.Option(None, help="[0]"),
    embed_dim: int | None = typer.Option(None, help="Output size of each encoder [128]"),
    dim: int | None = typer.Option(None, help="Size of the shared space [64]"),
    temperature: float | None = typer.Option(None, help="Initial temperature (learned) [0.07]"),
    image_size: ImageSize = None,
    sample_rate: SampleRate = None,
    on_bad_rows: str | None = typer.Option(None, help="error | skip"),
    accelerator: str | None = typer.Option(None, help="auto | cpu | gpu"),
    text_encoder: TextEncoder = None,
    image_encoder: ImageEncoder = None,
    audio_encoder: AudioEncoder = None,
    preset: Preset = None,
    finetune: Finetune = None,
    cache_dir: CacheDir = None,
) -> None:
    """Align columns of a table in one embedding space (contrastive, CLIP-style) and save the model.

    The settings are the config tree's (`polymodal config`; the align section names the columns): give a YAML file
    with --config, then flags and --set PATH=VALUE override it."""
    from polymodal.retrieval.retriever import MultimodalRetriever

    def go():
        settings = _settings(
            label=label, modalities=_modalities(text=text, image=image, audio=audio), max_epochs=max_epochs,
            batch_size=batch_size, lr=lr, patience=patience, seed=seed, embed_dim=embed_dim, dim=dim,
            temperature=temperature, on_bad_rows=on_bad_rows, accelerator=accelerator, text_encoder=text_encoder,
            image_encoder=image_encoder, audio_encoder=audio_encoder, preset=preset, cache_dir=cache_dir,
            freeze=None if finetune is None else not finetune,
            **{"preprocess.image_size": image_size, "preprocess.sample_rate": sample_rate},
        ) | _set_options(set_)  # fmt: skip
        r = MultimodalRetriever(query=query or None, target=target, config=config, **settings)
        r.fit(train, valid)
        folder = r.save(output)
        console.print(_retrieval_table(r.metrics_["valid"], "validation retrieval"))
        console.print(f"saved aligned model to {folder}")

    _run(go)


def _retrieval_table(metrics: dict, title: str):
    from rich.table import Table

    t = Table(title=title)
    for c in ("direction", "level", "recall@1", "recall@5", "recall@10", "mAP", "MRR", "queries"):
        t.add_column(c)
    for direction, levels in metrics.items():
        if not isinstance(levels, dict) or "instance" not in levels:
            continue
        for level, m in levels.items():
            t.add_row(direction, level, *(f"{m[k]:.3f}" for k in ("recall@1", "recall@5", "recall@10", "mAP", "MRR")),
                      str(m["queries"]))  # fmt: skip
    return t


@app.command("index")
def index_cmd(
    source: Path = typer.Argument(..., help="Aligned model folder (to build) or an index folder (with --add/--remove)"),
    gallery: Path | None = typer.Argument(None, help="Gallery table to index (when building)"),
    column: str | None = typer.Option(None, help="The gallery column to index (when building)"),
    output: Path | None = typer.Option(None, "--output", "-o", help="Index folder to write (default: MODEL/index)"),
    kind: str | None = typer.Option(None, "--index", help="flat | hnsw | ivf (default: by size; flat below 50k)"),
    id_column: str | None = typer.Option(None, help="Integer row ids from this column (default: row numbers)"),
    add: list[Path] | None = typer.Option(None, "--add", help="Add this table's rows to an existing index"),
    remove: list[int] | None = typer.Option(None, "--remove", help="Remove these row ids from an existing index"),
    cache_dir: CacheDir = None,
) -> None:
    """Build a FAISS index of a gallery column with an aligned model, or change one (--add / --remove)."""
    from polymodal.retrieval.search import Searcher

    def go():
        if add or remove:
            if gallery is not None:
                _fail("--add/--remove change an existing index: give the index folder only, no gallery table")
            s = Searcher.open(source, cache_dir=cache_dir)
            n_removed = s.remove(remove) if remove else 0
            n_added = sum(s.add(t, id_column) for t in add or [])
            folder = s.save(output or source)
            console.print(f"{folder}: added {n_added}, removed {n_removed}; {len(s.index)} rows ({s.index.kind})")
            return
        if gallery is None or column is None:
            _fail("to build an index give the model, the gallery table and --column: "
                  "polymodal index MODEL gallery.csv --column image -o MODEL/index")  # fmt: skip
        s = Searcher.build(source, gallery, column, output or source / "index", kind=kind, id_column=id_column,
                           cache_dir=cache_dir)  # fmt: skip
        console.print(f"indexed {len(s.index)} rows of {column!r} ({s.index.kind}) in {s.folder}")

    _retrieval_errors(go)


@app.command()
def search(
    index: Path = typer.Argument(..., help="Index folder (from `polymodal index`)"),
    audio: Path | None = typer.Option(None, "--audio", help="Query with this audio file"),
    image: Path | None = typer.Option(None, "--image", help="Query with this image file"),
    text: str | None = typer.Option(None, "--text", help="Query with this text"),
    k: int = typer.Option(10, "--k", "-k", help="How many results"),
    where: str | None = typer.Option(None, help="Filter on the gallery's other columns, e.g. \"speaker == 'jackson'\""),
    as_json: bool = typer.Option(False, "--json", help="Print the hits as JSON"),
    cache_dir: CacheDir = None,
) -> None:
    """The k gallery rows nearest to a query (audio, image or text), optionally filtered on metadata."""
    from rich.table import Table

    from polymodal.retrieval.search import Searcher

    def go():
        given = [(m, v) for m, v in (("audio", audio), ("image", image), ("text", text)) if v is not None]
        if len(given) != 1:
            _fail("give exactly one query: --audio FILE, --image FILE or --text TEXT")
        modality, value = given[0]
        if modality != "text" and not Path(value).is_file():
            _fail(f"--{modality} {value}: no such file")
        s = Searcher.open(index, cache_dir=cache_dir)
        hits = s.search(modality, str(value), k=k, where=where)
        if as_json:
            sys.stdout.write(json.dumps(hits, indent=2, default=str) + "\n")
            return
        t = Table(title=f"{len(hits)} nearest {s.index.settings['column']!r} rows to the {modality} query")
        cols = ["rank", "id", "score", *[c for c in s.index.metadata.columns if c not in ("id", "_source")]]
        for c in cols:
            t.add_column(c)
        for i, h in enumerate(hits, 1):
            t.add_row(str(i), str(h["id"]), f"{h['score']:.4f}", *(str(h.get(c, "")) for c in cols[3:]))
        console.print(t)

    _retrieval_errors(go)


@app.command("zero-shot")
def zero_shot_cmd(
    table: Path = typer.Argument(..., help="Table with an image column"),
    image: str = typer.Option(..., "--image", help="The image column"),
    classes: str = typer.Option(..., help="Comma-separated class names, e.g. 'cat,dog'"),
    template: str = typer.Option("a photo of a {}", help="Text for each class; {} is the class name"),
    model: str = typer.Option("openai/clip-vit-base-patch32", help="CLIP or SigLIP: hub id or local folder"),
    output: Path | None = typer.Option(None, "--output", "-o", help="CSV to write (default: print)"),
) -> None:
    """Classify images into named classes with a pretrained CLIP/SigLIP, without training."""
    import os
    import tempfile

    from polymodal.retrieval.zeroshot import zero_shot

    def go():
        out = zero_shot(table, image, classes, template, model)
        if output is None:
            console.print(out.to_string(index=False))
            return
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output.parent, suffix=".tmp")
        os.close(fd)
        out.to_csv(tmp, index=False)
        os.replace(tmp, output)
        console.print(f"wrote {len(out)} rows to {output}")

    _run(go)


@app.command()
def tune(
    train: Path = typer.Argument(..., help="Training table: .csv, .tsv, .parquet or .jsonl"),
    label: str = typer.Option(..., "--label", "-y", help="The column to predict"),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the study, trials, best model and report"),
    trials: int = typer.Option(20, help="Total trials of the study, over every re-run and worker"),
    timeout: str | None = typer.Option(None, help="Stop starting trials after this long: 2h, 90m, 45s"),
    space: Path | None = typer.Option(None, help="Search space YAML: dotted paths -> ranges, choices or values"),
    storage: str | None = typer.Option(None, help="Study storage URL (default: sqlite in OUTPUT; postgresql://...)"),
    study: str = typer.Option("polymodal-tune", help="Study name inside the storage"),
    valid: Path | None = typer.Option(None, help="Validation table (default: a stratified split of train)"),
    keep: int = typer.Option(3, help="Model folders kept: the best K trials'"),
    config: Path | None = typer.Option(None, help="Base config YAML every trial starts from"),
    pruner: str = typer.Option("median", help="median | hyperband | none: stop unpromising trials after an epoch"),
    seed: int = typer.Option(0, help="Seed of the TPE sampler"),
    heartbeat: int = typer.Option(60, help="Seconds between a trial's heartbeats; silent 2x as long = failed"),
    max_retry: int = typer.Option(2, help="How often a trial whose worker died is run again"),
    set_: SetOpt = None,
    anonymize: Anonymize = None,
    privacy_operator: PrivacyOperator = None,
    ner_model: NerModel = None,
) -> None:
    """Search the config space with Optuna (TPE, pruning); resumable; several workers may share one study."""
    from polymodal.config import build_config
    from polymodal.optimize.tune import tune as run_tune

    def go():
        base = build_config(config, **_settings(**{
            "privacy.anonymize": anonymize, "privacy.operator": privacy_operator, "privacy.ner_model": ner_model,
        }) | _set_options(set_))  # fmt: skip
        s = run_tune(
            train, label, output, trials=trials, timeout=timeout, space=space, storage=storage, study_name=study,
            valid=valid, keep=keep, config=base, pruner=pruner, seed=seed, heartbeat=heartbeat,
            max_retry=max_retry, log_fn=lambda m: console.print(m, highlight=False),
        )  # fmt: skip
        best = s["best"]
        if best is None:
            console.print(f"no trial finished; states: {s['states']}")
        else:
            console.print(f"best trial {best['number']}: {s['metric']} {best['value']:.4f}", highlight=False)
            for k, v in best["params"].items():
                console.print(f"  {k}: {v}", highlight=False)
        console.print(f"wrote {output / 'best'}, {output / 'trials.csv'}, {output / 'report.html'}")

    from polymodal.config import ConfigError
    from polymodal.optimize.tune import TuneError

    try:
        _run(go)
    except (ConfigError, TuneError) as e:  # ValueErrors, but say which kind
        _fail(str(e))
    except KeyboardInterrupt:
        err.print("interrupted: run the same command again to resume the study (the trial budget is a total)")
        raise typer.Exit(code=130) from None


# ---- polymodal rl: reinforcement learning with the polymodal extractor (the `rl` extra) ----------------------
rl_app = typer.Typer(no_args_is_help=True, help="Train and evaluate DQN/PPO agents on multimodal observations.")
app.add_typer(rl_app, name="rl")


def _rl_run(fn):
    """As _run, plus the RL set-up errors (unknown env id, action space, observation key) and a missing extra."""
    try:
        from polymodal.rl import ObservationError, RLSetupError
    except ImportError as e:
        _fail(f"polymodal rl needs the rl extra: pip install 'polymodal[rl]' ({e})")
    try:
        return _run(fn)
    except (RLSetupError, ObservationError) as e:
        _fail(str(e))


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            _fail(f"{what} takes KEY=VALUE, not {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


@rl_app.command("train")
def rl_train(
    output: Path = typer.Option(..., "--output", "-o", help="Policy folder to write"),
    env: str | None = typer.Option(None, "--env", help="A gymnasium env id, e.g. BabyAI-GoToLocalS6N2-v0 (rl.env_id)"),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    algo: str | None = typer.Option(None, help="dqn | ppo [ppo]"),
    steps: int | None = typer.Option(None, help="Environment steps to train for [50000]"),
    fusion: str | None = typer.Option(
        None, help="early | late | attention | gmu | tensor | low_rank | cross_attention [early]"
    ),
    seed: int | None = typer.Option(None, help="[0]"),
    n_envs: int | None = typer.Option(None, help="Parallel envs (default: 1 for DQN, 8 for PPO)"),
    embed_dim: int | None = typer.Option(None, help="Embedding size of every encoder [64]"),
    eval_every: int | None = typer.Option(None, help="Evaluate every this many steps (the learning curve) [5000]"),
    eval_episodes: int | None = typer.Option(None, help="Episodes per periodic evaluation [50]"),
    hide: list[str] | None = typer.Option(None, help="Observation key the agent does not see (repeatable)"),
    modality: list[str] | None = typer.Option(None, help="KEY=MODALITY: encode this key as text/image/... "),
    param: list[str] | None = typer.Option(None, help="NAME=VALUE: an SB3 hyper-parameter (JSON value)"),
    env_kwarg: list[str] | None = typer.Option(None, help="NAME=VALUE: a gymnasium.make keyword (JSON value)"),
    from_model: Path | None = typer.Option(None, help="Transfer encoders from this polymodal model folder"),
    transfer: list[str] | None = typer.Option(None, help="KEY=INPUT: observation key <- the model's input"),
    freeze: bool | None = typer.Option(
        None, "--freeze/--finetune", help="Freeze transferred encoders, or train them [freeze]"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar"),
) -> None:
    """Train a DQN or PPO agent with polymodal encoders and fusion; save the policy (safetensors + JSON).

    The settings are the config tree's rl section (`polymodal config`): give a YAML file with --config, then flags
    and --set rl.PATH=VALUE override it."""

    def values(items: list[str] | None, what: str) -> dict:
        def parse(v: str):
            try:
                return json.loads(v)
            except json.JSONDecodeError:  # a bare word is a string
                return v

        return {k: parse(v) for k, v in _pairs(items, what).items()}

    def go():
        from dataclasses import asdict

        from polymodal.config import build_config
        from polymodal.rl import AgentConfig, train

        flags = _settings(
            env_id=env, algo=algo, steps=steps, fusion=fusion, seed=seed, n_envs=n_envs, embed_dim=embed_dim,
            eval_every=eval_every, eval_episodes=eval_episodes, hide=hide, modalities=_pairs(modality, "--modality"),
            hyperparameters=values(param, "--param"), env_kwargs=values(env_kwarg, "--env-kwarg"),
            model=str(from_model) if from_model else None, transfer=_pairs(transfer, "--transfer"), freeze=freeze,
        )  # fmt: skip
        flags = {k: v for k, v in flags.items() if v != {}}
        tree = build_config(config, **{f"rl.{k}": v for k, v in flags.items()}, **_set_options(set_))
        cfg = AgentConfig(**asdict(tree.rl))
        agent = train(cfg, progress_bar=progress)
        folder = agent.save(output)
        last = agent.history[-1]
        console.print(
            f"{cfg.algo} on {cfg.env_id}: success {last['success_rate']:.2f}, return {last['mean_return']:.3f} "
            f"after {last['steps']} steps ({agent.train_seconds:.0f} s); saved policy to {folder}"
        )

    _rl_run(go)


@rl_app.command("evaluate")
def rl_evaluate(
    policy: Path = typer.Argument(..., help="Policy folder written by `polymodal rl train`"),
    episodes: int = typer.Option(100, help="Evaluation episodes (seeded, deterministic actions)"),
    seed: int = typer.Option(1_000_000, help="Seed of the first episode"),
) -> None:
    """Success rate, mean return and episode length of a saved policy on its env."""

    def go():
        from polymodal.rl import Agent

        agent = Agent.load(policy)
        r = agent.evaluate(episodes, seed)
        console.print(
            f"{agent.config.env_id}: success {r['success_rate']:.3f}, return {r['mean_return']:.3f}, "
            f"length {r['mean_length']:.1f} over {episodes} episodes"
        )
        console.print_json(json.dumps(r))

    _rl_run(go)


@app.command()
def compress(
    model: Path = typer.Argument(..., help="Model folder (left unchanged)"),
    output: Path = typer.Option(..., "--output", "-o", help="The compressed model folder to write"),
    prune: float | None = typer.Option(None, help="Fraction of weights (or with --structured: of channels) to remove"),
    structured: bool = typer.Option(False, help="Remove whole conv channels and hidden units (the layers shrink)"),
    quantize: str | None = typer.Option(None, help="int8: weights stored as int8; Linear/GRU run int8"),
    calibration: Path | None = typer.Option(None, "--calibration", "--train", help="Training table (fine-tune)"),
    finetune_epochs: int = typer.Option(3, help="Epochs of fine-tuning after pruning, on --calibration"),
) -> None:
    """Prune and/or quantize a model into a new, ordinary model folder that records how it was made."""
    from polymodal.optimize.compress import compress as run

    def go():
        r = run(model, output, prune, structured, quantize, calibration, finetune_epochs)
        b, a = r["before"], r["after"]
        console.print(
            f"wrote {output}: parameters {b['parameters']:,} -> {a['parameters']:,}, "
            f"non-zero {b['nonzero']:,} -> {a['nonzero']:,}" + (f", weights {quantize}" if quantize else "")
        )

    _run(go)


@app.command()
def export(
    model: Path = typer.Argument(..., help="Model folder"),
    output: Path = typer.Option(..., "--output", "-o", help="The .onnx file to write"),
    format: str = typer.Option("onnx", "--format", help="onnx"),
    quantize: str | None = typer.Option(None, help="dynamic | static: int8 with ONNX Runtime"),
    calibration: Path | None = typer.Option(None, help="Training table for --quantize static"),
) -> None:
    """Export a model to one ONNX graph (preprocessing inside); run it with --runtime onnx."""
    from polymodal.optimize.export import export_model

    def go():
        path = export_model(model, output, format, quantize, calibration)
        console.print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")

    _run(go)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
