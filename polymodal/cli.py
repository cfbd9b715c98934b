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
NoiseRows = Annotated[int, typer.Option(help="Measure the noise curves on a fixed sample of this many test rows")]
GroupBy = Annotated[
    str | None,
    typer.Option(help="A column naming groups of rows (e.g. question type): metrics per value too (data.group_by)"),
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
    """Turn the errors a user can fix (bad rows, unknown columns, missing files) into a message and exit code 2."""
    from polymodal.data import BadRowsError, SchemaError
    from polymodal.encoders.pretrained import EncoderNotFound

    try:
        return fn()
    except (BadRowsError, SchemaError, FileNotFoundError, ValueError, EncoderNotFound) as e:
        _fail(str(e))


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
    devices: str | None = typer.Option(None, help="Number of devices, or 'auto' [1]"),
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
) -> None:
    """Train a fused model on a table and save it to a folder.

    Every setting has a dotted path in the config tree (`polymodal config` lists them): give a YAML file with
    --config, then flags and --set PATH=VALUE override it."""
    from polymodal.evaluation.table import metrics_table
    from polymodal.predictor import MultimodalPredictor

    def go():
        settings = _settings(
            label=label, fusion=fusion, problem_type=problem_type, ignore=ignore,
            modalities=_modalities(text=text, image=image, audio=audio, numeric=numeric, categorical=categorical),
            max_epochs=max_epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience,
            seed=seed, embed_dim=embed_dim, modality_dropout=modality_dropout, on_bad_rows=on_bad_rows,
            accelerator=accelerator, precision=precision, text_encoder=text_encoder, image_encoder=image_encoder,
            audio_encoder=audio_encoder, preset=preset, finetune_layers=finetune_layers, lora=lora,
            encoder_lr=encoder_lr, cache_dir=cache_dir,
            devices=None if devices is None else int(devices) if devices.isdigit() else devices,
            freeze=None if finetune is None else not finetune,
            **{"preprocess.image_size": image_size, "preprocess.image_fit": image_fit,
               "preprocess.sample_rate": sample_rate},
        ) | _set_options(set_)  # fmt: skip
        p = MultimodalPredictor(config=config, **settings)
        p.fit(train, valid)
        folder = p.save(output)
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
    group_by: GroupBy = None,
) -> None:
    """Metrics of a saved model on a labelled table; writes them to metrics.json."""
    from polymodal.evaluation.table import confusion_table, metrics_table
    from polymodal.model.artifact import METRICS, read_json, write_json
    from polymodal.predictor import MultimodalPredictor

    def go():
        p = MultimodalPredictor.load(model)
        p.config_.data.on_bad_rows = on_bad_rows
        m = p.evaluate(table, group_by=group_by) | {"table": str(table)}
        groups = {f"{m['group_by']}={g}": v for g, v in m.get("groups", {}).items()}
        console.print(metrics_table({p.fusion: m} | groups, title=f"metrics on {table}"))
        if "confusion_matrix" in m:
            console.print(confusion_table(m["confusion_matrix"], p.engine.task.classes))
        if output is not None:
            write_json(output, m)
            console.print(f"wrote {output}")
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
) -> None:
    """Predict labels (and class probabilities) for every row of a table."""
    import os
    import tempfile

    from polymodal.data.io import read_table
    from polymodal.predictor import MultimodalPredictor

    def go():
        p = MultimodalPredictor.load(model)
        df, _ = read_table(table)
        out = df.copy()
        if p.engine.task.is_classification:
            proba = p.predict_proba(table, on_bad_rows=on_bad_rows)
            out["prediction"] = p.engine.task.decode(proba.to_numpy())
            for c in proba.columns:
                out[f"proba_{c}"] = proba[c].to_numpy()
        else:
            out["prediction"] = p.predict(table, on_bad_rows=on_bad_rows).to_numpy()
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output.parent, suffix=".tmp")
        os.close(fd)
        out.to_csv(tmp, index=False)
        os.replace(tmp, output)
        console.print(f"wrote {len(out)} predictions to {output}")

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
        i = MultimodalPredictor.load(model).info()
        if as_json:
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
        None, help="Environment variable holding the API key; /v1 then needs 'Authorization: Bearer <key>'"
    ),
    max_body_mb: float = typer.Option(16.0, help="Largest request body, in MiB"),
    max_instances: int = typer.Option(64, help="Instances per request at most"),
    max_image_pixels: int = typer.Option(16_777_216, help="Largest image (width x height), checked before decoding"),
    max_audio_seconds: float = typer.Option(60.0, help="Longest audio clip"),
    max_text_chars: int = typer.Option(10_000, help="Longest text value"),
    max_queue: int = typer.Option(512, help="Rows waiting for the model at most; beyond it requests get 429"),
    log_level: str = typer.Option("info", help="debug | info | warning | error"),
) -> None:
    """Serve a model over HTTP: JSON and form prediction endpoints, metrics, and a page to try it at /."""
    from polymodal.serving import ServeConfig, resolve_host
    from polymodal.serving import serve as run_server

    def go():
        config = ServeConfig(
            model=str(model), max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, api_key_env=api_key_env,
            max_body_bytes=int(max_body_mb * 1024 * 1024), max_instances=max_instances,
            max_image_pixels=max_image_pixels, max_audio_seconds=max_audio_seconds, max_text_chars=max_text_chars,
            max_queue=max_queue,
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
    group_by: GroupBy = None,
) -> None:
    """Leaderboard of unimodal baselines, fusions and ensembles over seeds, with robustness and an HTML report.

    Re-running the same command skips the entries that finished. Model settings: --config/--set as in `fit`."""
    from polymodal.evaluation.compare import compare as run_compare
    from polymodal.evaluation.compare import leaderboard_table

    def go():
        settings = _settings(
            config=config, problem_type=problem_type, ignore=ignore,
            modalities=_modalities(text=text, image=image, audio=audio, numeric=numeric, categorical=categorical),
            embed_dim=embed_dim, max_epochs=max_epochs, batch_size=batch_size, lr=lr, patience=patience,
            modality_dropout=modality_dropout, on_bad_rows=on_bad_rows, accelerator=accelerator,
            text_encoder=text_encoder, image_encoder=image_encoder, audio_encoder=audio_encoder, preset=preset,
            cache_dir=cache_dir, freeze=None if finetune is None else not finetune,
            **{"preprocess.image_size": image_size, "preprocess.image_fit": image_fit,
               "preprocess.sample_rate": sample_rate, "data.group_by": group_by},
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
