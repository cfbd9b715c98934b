"""The command line end to end: fit -> evaluate -> predict -> info, and its errors."""

import json
import subprocess
import sys

import pandas as pd
from typer.testing import CliRunner

from polymodal.cli import app

runner = CliRunner()
FAST = ["--image-size", "16", "--sample-rate", "8000", "--embed-dim", "32", "--max-epochs", "15", "--lr", "3e-3"]


def test_fit_evaluate_predict_info(synth_split, tmp_path):
    train, test = synth_split
    out = tmp_path / "m1"
    r = runner.invoke(app, ["fit", str(train), "--label", "y", "-o", str(out), "--fusion", "early", "--text", "caption",
                            "--ignore", "score", "--ignore", "clip", *FAST])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "saved model to" in r.output and (out / "model.safetensors").exists()

    r = runner.invoke(app, ["evaluate", str(out), str(test)])
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output and "confusion matrix" in r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.8 and "valid" in metrics

    preds = tmp_path / "preds.csv"
    r = runner.invoke(app, ["predict", str(out), str(test), "-o", str(preds)])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(preds)
    assert {"prediction", "proba_0", "proba_3"} <= set(df.columns) and len(df) == len(pd.read_csv(test))
    assert (df["prediction"] == pd.read_csv(test)["y"]).mean() > 0.8

    r = runner.invoke(app, ["info", str(out)])
    assert r.exit_code == 0, r.output
    assert "ImageCNN" in r.output and "TextRNN" in r.output and "total" in r.output
    r = runner.invoke(app, ["info", str(out), "--json"])
    info = json.loads(r.stdout)
    assert info["fusion"] == "early" and info["parameters"] > 0 and info["schema"]["columns"]["caption"] == "text"


def test_bad_rows_exit_2_with_the_rows_named(synth_split, tmp_path):
    train, _ = synth_split
    df = pd.read_csv(train)
    df.loc[3, "image"] = "img/missing.png"
    bad = train.parent / "bad.csv"
    df.to_csv(bad, index=False)
    r = runner.invoke(app, ["fit", str(bad), "--label", "y", "-o", str(tmp_path / "m"), *FAST])
    assert r.exit_code == 2
    assert "row 3, column 'image': file not found" in r.output and "--on-bad-rows skip" in r.output
    assert not (tmp_path / "m").exists()


def test_unknown_label_exit_2(synth_split, tmp_path):
    train, _ = synth_split
    r = runner.invoke(app, ["fit", str(train), "--label", "target", "-o", str(tmp_path / "m")])
    assert r.exit_code == 2 and "unknown column(s) ['target']" in r.output


def test_help_does_not_import_torch():
    code = "import sys; from polymodal.cli import app; assert 'torch' not in sys.modules; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "ok\n"
    r = subprocess.run([sys.executable, "-m", "polymodal", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "fit" in r.stdout and "evaluate" in r.stdout
