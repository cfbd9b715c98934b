"""polymodal config / demo / encoders: the settings tree, a demo run offline, and the encoders on offer."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from polymodal.cli.base import _run, _set_options, console
from polymodal.cli.options import ConfigOpt, SetOpt


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
