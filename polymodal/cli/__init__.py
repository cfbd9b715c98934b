"""The `polymodal` command line. Each verb is a thin call into the layers below; heavy imports happen inside the
command functions, so `polymodal --help` stays fast.

One module per verb family (train: fit/evaluate/predict/info, studies: compare/report, tune, optimize:
compress/export, retrieval, serve, rl, privacy: anonymize, basics: config/demo/encoders); `base` holds the app,
its --debug callback and the error handling, `options` the options several verbs share. The verbs are registered
here, in one place, because the order below is the order of `polymodal --help` and of the docs' CLI page."""

from __future__ import annotations

from polymodal.cli import basics, optimize, privacy, retrieval, rl, serve, studies, train, tune
from polymodal.cli.base import app
from polymodal.cli.train import checkpoint_folder

app.command()(train.fit)
app.command("config")(basics.config_cmd)
app.command()(train.evaluate)
app.command()(train.predict)
app.command()(train.info)
app.command()(basics.encoders)
app.command()(basics.demo)
app.command()(serve.serve)
app.command()(studies.compare)
app.command()(studies.report)
app.command()(privacy.anonymize)
app.command()(retrieval.align)
app.command("index")(retrieval.index_cmd)
app.command()(retrieval.search)
app.command("zero-shot")(retrieval.zero_shot_cmd)
app.command()(tune.tune)
app.command()(optimize.compress)
app.command()(optimize.export)
app.add_typer(rl.rl_app, name="rl")


def main() -> None:
    app()


__all__ = ["app", "checkpoint_folder", "main"]
