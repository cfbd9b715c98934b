"""Every verb with a text label, through the CLI: fit, evaluate (metrics.json `test`), predict (text in
`prediction`), report (best and worst examples), export (ONNX Runtime predicts the same strings), compress,
compare and tune, on a small every-kind table (tests/synth.py) with empty cells."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
from synth import make_table
from typer.testing import CliRunner

from polymodal.cli import app

runner = CliRunner()
SMALL = ["--set", "decoder.dim=16", "--set", "decoder.layers=1", "--set", "decoder.heads=2",
         "--set", "decoder.max_length=5", "--set", "encoders.embed_dim=16", "--set", "fusion.hidden=16",
         "--set", "preprocess.image_size=16", "--set", "preprocess.sample_rate=8000", "--set", "train.batch_size=32",
         "--set", "train.progress=false"]  # fmt: skip


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text_verbs")
    df = make_table(folder, 120, seed=3)
    df["words"] = [f"a {'blue' if y // 2 else 'red'} {'dog' if y % 2 else 'cat'}" for y in df["y"]]
    df = df.drop(columns=["y", "score"])
    df.loc[[2, 5], "image"] = None  # empty cells: absent inputs
    df.loc[[3], "caption"] = None
    df.loc[[4], "price"] = None
    df.iloc[:90].to_csv(folder / "train.csv", index=False)
    df.iloc[90:].to_csv(folder / "test.csv", index=False)
    return folder


def ok(args: list[str]) -> str:
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def model(table, pinned_torch):
    out = table / "m"
    ok(["fit", str(table / "train.csv"), "--label", "words", "--problem-type", "text", "-o", str(out),
        "--max-epochs", "2", "--fusion", "early", *SMALL])  # fmt: skip
    return out


def test_fit_evaluate_predict_report(model, table):
    ok(["evaluate", str(model), str(table / "test.csv")])
    test = json.loads((model / "metrics.json").read_text())["test"]
    assert {"wer", "cer", "bleu", "chrf", "cider", "rouge_l", "exact_match"} <= set(test)
    ok(["predict", str(model), str(table / "test.csv"), "-o", str(table / "p.csv")])
    pred = pd.read_csv(table / "p.csv", keep_default_na=False)
    assert len(pred) == 30 and pred["prediction"].map(lambda s: isinstance(s, str)).all() and "score" in pred
    ok(
        [
            "predict",
            str(model),
            str(table / "test.csv"),
            "-o",
            str(table / "nb.csv"),
            "--beam-size",
            "2",
            "--n-best",
            "2",
        ]
    )
    nb = pd.read_csv(table / "nb.csv", keep_default_na=False)
    assert {"text_1", "text_2", "score_2"} <= set(nb.columns) and (nb["score_1"] >= nb["score_2"]).all()
    ok(["report", str(model), str(table / "test.csv"), "-o", str(table / "r.html"), "--noise-levels", "1"])
    html = (table / "r.html").read_text()
    assert "Best and worst examples" in html and "reference" in html and "<audio" in html and "base64" in html


def test_export_and_compress(model, table):
    graph = table / "m.onnx"
    ok(["export", str(model), "--format", "onnx", "-o", str(graph)])
    ok(["predict", str(graph), str(table / "test.csv"), "-o", str(table / "po.csv"), "--runtime", "onnx"])
    ok(["predict", str(model), str(table / "test.csv"), "-o", str(table / "pt.csv")])
    a = pd.read_csv(table / "po.csv", keep_default_na=False)["prediction"]
    b = pd.read_csv(table / "pt.csv", keep_default_na=False)["prediction"]
    assert a.tolist() == b.tolist()
    ok(["compress", str(model), "--quantize", "int8", "-o", str(table / "c")])
    ok(["evaluate", str(table / "c"), str(table / "test.csv")])


def test_compare_and_tune(table, pinned_torch):
    out = table / "cmp"
    ok(["compare", str(table / "train.csv"), "--label", "words", "--problem-type", "text", "-o", str(out),
        "--test", str(table / "test.csv"), "--fusions", "early,ensemble-average,ensemble-stack", "--seeds", "1",
        "--noise-levels", "1", "--noise-rows", "20", "--max-epochs", "1", "--ignore", "clip", "--ignore", "price",
        "--ignore", "shade", *SMALL])  # fmt: skip
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["metric"] == "cider"  # no audio input: caption-like, CIDEr
    # ensemble-stack is left out for text; ensemble-average decodes the unimodal models together
    assert [r["entry"] for r in board["results"]] == ["image only", "caption only", "early", "ensemble-average"]
    assert {"wer", "cider", "exact_match"} <= set(board["results"][-1]["metrics"])
    assert (out / "report.html").exists()
    space = table / "space.yaml"
    space.write_text("train.lr: {type: float, low: 0.001, high: 0.003}\n")
    ok(["tune", str(table / "train.csv"), "--label", "words", "-o", str(table / "tune"), "--trials", "2",
        "--space", str(space), "--pruner", "none", "--set", "data.problem_type=text", "--set", "train.max_epochs=1",
        "--set", "data.ignore=[clip, price, shade]",
        *SMALL])  # fmt: skip
    summary = json.loads((table / "tune" / "tune.json").read_text())
    assert summary["metric"] == "cider" and summary["best_folder"]


def test_serve_answers_the_generated_text(model, table):
    import base64

    from fastapi.testclient import TestClient

    from polymodal import MultimodalPredictor
    from polymodal.serving import ServeConfig, create_app
    from polymodal.serving.service import ModelService

    test = pd.read_csv(table / "test.csv")
    rows = test[test["image"].notna() & test["caption"].notna()].head(3)
    expected = MultimodalPredictor.load(model).predict(
        rows.assign(image=[str(table / p) for p in rows["image"]], clip=[str(table / p) for p in rows["clip"]])
    )

    def b64(path: str) -> str:
        return base64.b64encode((table / path).read_bytes()).decode()

    instances = [{"image": b64(r.image), "caption": r.caption, "clip": b64(r.clip), "price": float(r.price),
                  "shade": r.shade} for r in rows.itertuples()]  # fmt: skip
    with TestClient(create_app(ServeConfig(model=str(model)), ModelService(model))) as client:
        for _ in range(600):
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.1)
        r = client.post("/v1/predict", json={"instances": instances})
        assert r.status_code == 200, r.text
        got = [p["prediction"] for p in r.json()["predictions"]]
        assert got == list(expected) and all(isinstance(g, str) for g in got)
        page = client.get("/").text
        assert "<html" in page.lower()
