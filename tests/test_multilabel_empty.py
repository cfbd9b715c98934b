"""Issue 24, part 8: multilabel rows with no label (`data.empty_label`: missing | none | a token such as "-")."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import synth
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data.schema import ProblemType, SchemaError, infer_schema
from polymodal.data.validate import check_labels
from polymodal.tasks import Task, label_sets

FAST = ["--max-epochs", "12", "--batch-size", "16", "--embed-dim", "16", "--patience", "12", "--accelerator", "cpu"]
LABELS = ["dog", "pricey"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """Text + price + shade; the label set is 'dog' (the text names a dog) and 'pricey' (price > 10.5): a cat row
    with a low price has no label (about a quarter of the rows). Two copies: empty cells, and cells holding '-'."""
    folder = tmp_path_factory.mktemp("empty")
    df = synth.make_table(folder, 200, seed=3)[["caption", "price", "shade", "y"]]
    tags = []
    for b, price in zip(df.pop("y") % 2, df["price"], strict=True):
        tags.append("|".join((["dog"] if b else []) + (["pricey"] if price > 10.5 else [])))
    df["tags"] = tags
    assert 20 < (df["tags"] == "").sum() < 100
    df.assign(tags=df["tags"].replace("", np.nan)).to_csv(folder / "blank.csv", index=False)
    df.assign(tags=df["tags"].replace("", "-")).to_csv(folder / "token.csv", index=False)
    return folder


def test_metrics_by_hand_and_the_at_least_one_rule():
    task = Task.fit(ProblemType.MULTILABEL, pd.Series(["a", np.nan, "a|b"]), empty_label="none")
    assert task.classes == ["a", "b"] and task.allows_empty
    y = pd.Series(["a", np.nan, "a|b", np.nan])
    assert task.encode_targets(y).tolist() == [[1, 0], [0, 0], [1, 1], [0, 0]]
    proba = np.array([[0.9, 0.1], [0.2, 0.1], [0.8, 0.3], [0.7, 0.2]])  # sets {a}, {}, {a}, {a}
    assert task.decode(proba).tolist() == ["a", "", "a", "a"]
    m = task.metrics(y, proba)
    # per row F1: 1, 1 (two empty sets: 1 by convention), 2/3, 0; Jaccard: 1, 1, 1/2, 0
    assert m["f1_samples"] == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)
    assert m["jaccard_samples"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert m["accuracy"] == 0.5 and m["hamming_loss"] == pytest.approx(2 / 8)
    assert m["f1_micro"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # tp 2, fp 1 (row 3), fn 1 (b in row 2)
    assert m["f1_macro"] == pytest.approx((0.8 + 0.0) / 2)  # a: p 2/3, r 1; b: never predicted
    assert m["empty_rows"] == 2 and m["empty_accuracy"] == 0.5
    # "missing" (and models saved before the setting): at least one label, the most probable one
    old = Task.from_dict({k: v for k, v in task.to_dict().items() if k != "empty_label"})
    assert old.empty_label == "missing" and old.decode(proba).tolist() == ["a", "a", "a", "a"]
    assert label_sets(proba).tolist()[1] == [1, 0] and label_sets(proba, at_least_one=False).tolist()[1] == [0, 0]
    assert "empty_rows" not in old.metrics(pd.Series(["a", "b", "a|b", "a"]), proba)
    # a token: only a cell holding exactly it is the empty set; it is never a label
    token = Task.fit(ProblemType.MULTILABEL, pd.Series(["a", "-", "b"]), empty_label="-")
    assert token.classes == ["a", "b"] and token.encode_targets(pd.Series(["-", " - ", "b"])).tolist() == [
        [0, 0],
        [0, 0],
        [0, 1],
    ]
    assert Task.from_dict(json.loads(json.dumps(token.to_dict()))).empty_label == "-"


def test_validation_per_setting():
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, 5.0], "tags": ["a|b", np.nan, "-", " ", "-|a"]})

    def problems(mode: str) -> list[tuple[int, str]]:
        schema = infer_schema(df, "tags", problem_type="multilabel", empty_label=mode)
        return [(p.row, p.reason) for p in check_labels(df, schema)]

    missing = problems("missing")  # a blank cell is missing too; "-" is a label of its own here
    assert [r for r, _ in missing] == [1, 3] and "label is empty (NaN)" in missing[0][1]
    assert "data.empty_label=none" in missing[0][1]
    assert problems("none") == []
    token = problems("-")  # the empty cells stay missing; the token beside a label is refused
    assert [r for r, _ in token] == [1, 3, 4] and "'-' beside labels" in token[2][1]
    for bad in ("", "a|b", "  "):
        with pytest.raises(SchemaError, match="data.empty_label"):
            infer_schema(df, "tags", problem_type="multilabel", empty_label=bad)


def test_missing_still_refuses_empty_rows(tables, tmp_path):
    r = CliRunner().invoke(app, ["fit", str(tables / "blank.csv"), "-y", "tags", "-o", str(tmp_path / "m"), *FAST])
    assert r.exit_code == 2 and "bad row(s)" in r.output  # a UserError: `error: ...`, exit 2
    empty = pd.read_csv(tables / "blank.csv")["tags"].isna().to_numpy().nonzero()[0]
    assert f"{len(empty)} bad row(s)" in r.output
    assert f"row {empty[0]}, column 'tags': label is empty (NaN)" in " ".join(r.output.split())


@pytest.mark.parametrize("table, mode", [("blank.csv", "none"), ("token.csv", "-")])
def test_fit_evaluate_predict_with_empty_sets(tables, tmp_path, table, mode, one_torch_thread):
    from polymodal import MultimodalPredictor

    train, model = tables / table, tmp_path / "m"
    args = ["fit", str(train), "-y", "tags", "-o", str(model), "--set", f"data.empty_label={mode}", *FAST]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    config = json.loads((model / "config.json").read_text())
    assert config["config"]["data"]["empty_label"] == config["task"]["empty_label"] == mode
    assert config["task"]["classes"] == LABELS

    r = CliRunner().invoke(app, ["evaluate", str(model), str(train), "-o", str(tmp_path / "metrics.json")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "metrics.json").read_text())
    n_empty = int((pd.read_csv(train)["tags"].fillna("-") == "-").sum())
    assert m["empty_rows"] == n_empty and m["empty_accuracy"] >= 0.5  # margin: a learnable rule, trained rows
    assert m["f1_micro"] >= 0.7 and "empty_accuracy" in r.output

    r = CliRunner().invoke(app, ["predict", str(model), str(train), "-o", str(tmp_path / "pred.csv")])
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(tmp_path / "pred.csv", keep_default_na=False)
    chosen = [
        "|".join(c for c in LABELS if row[f"proba_{c}"] >= 0.5) for _, row in pred.iterrows()
    ]  # no label forced: the labels at 0.5 or above, possibly none
    assert pred["prediction"].tolist() == chosen and "" in chosen

    loaded = MultimodalPredictor.load(model)  # the setting comes back with the folder
    assert loaded.config_.data.empty_label == mode and loaded.engine.task.empty_label == mode
    assert loaded.predict(train).fillna("").tolist() == chosen

    from polymodal.optimize.export import export_model

    graph = export_model(model, tmp_path / "m.onnx")  # ONNX Runtime decodes through the same task
    onnx = MultimodalPredictor.load(graph, runtime="onnx")
    proba = onnx.predict_proba(train).to_numpy()
    assert np.abs(proba - pred[[f"proba_{c}" for c in LABELS]].to_numpy()).max() < 1e-3
    clear = (np.abs(proba - 0.5) > 1e-3).all(axis=1)  # rows at the threshold may fall either way
    onnx_pred = onnx.predict(train).fillna("").to_numpy()
    assert (onnx_pred[clear] == np.array(chosen)[clear]).all() and "" in onnx_pred[clear]

    from polymodal.serving import ServeConfig, create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    i = chosen.index("")
    row = pd.read_csv(train).iloc[i]
    inst = {"caption": row["caption"], "price": float(row["price"]), "shade": row["shade"]}
    with TestClient(create_app(ServeConfig(model=str(model), warmup=False))) as c:
        (p,) = c.post("/v1/predict", json={"instances": [inst]}).json()["predictions"]
    assert p["prediction"] == "" and p["labels"] == []  # no label passes: the empty set, not [""]
