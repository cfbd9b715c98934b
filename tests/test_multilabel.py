"""Issue 9, part 7: multilabel classification (`cat|outdoor`) through fit, evaluate, predict, report, compare, serve."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import synth
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data.schema import ProblemType, infer_problem_type
from polymodal.tasks import Task, label_sets

FAST = ["--max-epochs", "4", "--batch-size", "16", "--embed-dim", "16", "--patience", "4", "--accelerator", "cpu"]


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """Text + numeric + categorical inputs; the label is a set: the animal of the text, 'pricey', 'light'."""
    folder = tmp_path_factory.mktemp("multilabel")
    df = synth.make_table(folder, 120, seed=5)
    b = df["y"] % 2
    tags = []
    for animal, price, shade in zip(np.where(b == 1, "dog", "cat"), df["price"], df["shade"], strict=True):
        tags.append("|".join([animal] + (["pricey"] if price > 10 else []) + (["light"] if shade == "light" else [])))
    df = df[["caption", "price", "shade"]].assign(tags=tags)
    df.to_csv(folder / "train.csv", index=False)
    df.iloc[:30].to_csv(folder / "test.csv", index=False)
    return folder


def test_the_task_infers_encodes_decodes_and_scores_label_sets():
    assert infer_problem_type(pd.Series(["cat|outdoor", "dog", "cat"])) is ProblemType.MULTILABEL
    assert infer_problem_type(pd.Series(["cat", "dog", "cat"])) is ProblemType.BINARY
    task = Task.fit(ProblemType.MULTILABEL, pd.Series(["cat|outdoor", "dog", "cat | indoor"]))
    assert task.classes == ["cat", "dog", "indoor", "outdoor"] and task.monitor == ("f1_micro", "max")
    y = task.encode_targets(pd.Series(["cat|outdoor", "dog"]))
    assert y.tolist() == [[1, 0, 0, 1], [0, 1, 0, 0]]
    proba = np.array([[0.9, 0.1, 0.2, 0.6], [0.2, 0.3, 0.1, 0.4]])
    assert label_sets(proba).tolist() == [[1, 0, 0, 1], [0, 0, 0, 1]]  # nothing >= 0.5: the most probable one
    assert task.decode(proba).tolist() == ["cat|outdoor", "outdoor"]
    m = task.metrics(pd.Series(["cat|outdoor", "dog"]), proba)
    assert m["f1_micro"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1)) and m["accuracy"] == 0.5
    assert m["per_class"]["dog"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert 0 < m["jaccard_samples"] < 1 and m["hamming_loss"] == pytest.approx(2 / 8)
    with pytest.raises(ValueError, match="not seen in training"):
        task.encode_targets(pd.Series(["cat|bird"]))


def test_multilabel_through_every_verb(tagged, tmp_path, monkeypatch):
    train, test, model = tagged / "train.csv", tagged / "test.csv", tmp_path / "m"
    r = CliRunner().invoke(app, ["fit", str(train), "-y", "tags", "-o", str(model), "--fusion", "early", *FAST])
    assert r.exit_code == 0, r.output
    config = json.loads((model / "config.json").read_text())
    assert config["schema"]["problem_type"] == "multilabel"
    assert "f1_micro" in r.output and "jaccard_samples" in r.output

    r = CliRunner().invoke(app, ["evaluate", str(model), str(test), "-o", str(tmp_path / "metrics.json")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert {"f1_micro", "f1_macro", "jaccard_samples", "precision_micro", "recall_micro"} <= set(m)
    assert set(m["per_class"]) == {"cat", "dog", "light", "pricey"}

    r = CliRunner().invoke(app, ["predict", str(model), str(test), "-o", str(tmp_path / "pred.csv")])
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(tmp_path / "pred.csv")
    for value, *probs in pred[["prediction", "proba_cat", "proba_dog", "proba_light", "proba_pricey"]].itertuples(
        index=False
    ):
        chosen = {c for c, p in zip(["cat", "dog", "light", "pricey"], probs, strict=True) if p >= 0.5}
        assert set(value.split("|")) == (chosen or {value})  # >= 0.5, else the single most probable label

    r = CliRunner().invoke(app, ["report", str(model), str(test), "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text()
    assert "f1_micro" in html and "per-label metrics" in html

    from polymodal.serving import ServeConfig, create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    with TestClient(create_app(ServeConfig(model=str(model), warmup=False))) as c:
        row = pd.read_csv(test).iloc[0]
        inst = {"caption": row["caption"], "price": float(row["price"]), "shade": row["shade"]}
        (p,) = c.post("/v1/predict", json={"instances": [inst]}).json()["predictions"]
        assert set(p["probabilities"]) == {"cat", "dog", "light", "pricey"}
        assert p["labels"] == p["prediction"].split("|") and p["prediction"] == pred["prediction"].iloc[0]


def test_multilabel_compare(tagged, tmp_path):
    from polymodal.studies.compare import compare

    options = dict(synth.FAST, max_epochs=2, patience=1, embed_dim=16, hidden=16)
    board = compare(tagged / "train.csv", "tags", tmp_path / "c", fusions="early,ensemble-average", seeds=1,
                    noise_levels=1, noise_rows=10, permutations=1, **options)  # fmt: skip
    assert board["metric"] == "f1_micro" and board["problem_type"] == "multilabel"
    assert [r["entry"] for r in board["leaderboard"] if r["kind"] == "ensemble"] == []
    assert board["majority_class"]["name"].startswith("majority label set") and "f1_micro" not in board["verdict"][:0]
    assert "per-label metrics" in (tmp_path / "c" / "report.html").read_text()
