"""`polymodal serve` on a PyTorch model folder answers through the model's ONNX graph, exported at start
(serving/graph.py), only when the graph answers as the model does; otherwise PyTorch serves it."""

import sys

import numpy as np
import pandas as pd
import pytest
from test_serving import fit_model

from polymodal.serving.service import ModelService


@pytest.fixture(scope="module")
def model_and_rows(tmp_path_factory):
    model, test = fit_model(tmp_path_factory)
    df = pd.read_csv(test)
    plain = ModelService(model, accelerate=False)
    rows = []
    for i, r in df.iterrows():  # files by value, as a request sends them; some cells empty
        row = {c: r[c] for c in plain.schema.columns}
        for c in ("image", "clip"):
            row[c] = (test.parent / r[c]).read_bytes() if isinstance(r[c], str) else None
        row = {c: (None if isinstance(v, float) and np.isnan(v) else v) for c, v in row.items()}
        if i % 3 == 1:
            row["caption"] = None
        rows.append(row)
    return model, plain, rows


def probabilities(service, rows):
    (answers,) = service.run([service.decode(rows)])
    return np.array([list(a["probabilities"].values()) for a in answers])


def test_the_model_is_served_through_its_graph(model_and_rows):
    model, plain, rows = model_and_rows
    service = ModelService(model)
    assert service.executor == "onnx-graph" and service.engine.runtime == "onnx"
    assert service.describe()["runtime"] == "torch" and service.describe()["executor"] == "onnx-graph"
    assert plain.executor == "pytorch"
    for batch in (rows[:1], rows[1:2], rows):  # lone requests and a batch, inputs present and absent
        np.testing.assert_allclose(probabilities(service, batch), probabilities(plain, batch), rtol=1e-4, atol=1e-5)
    assert not list(model.glob("*.onnx"))  # nothing written into the user's folder: a temporary one
    assert service._graph_path.suffix == ".onnx" and not service._graph_path.parent.exists()  # removed once read


def test_a_graph_that_answers_otherwise_is_not_used(model_and_rows, monkeypatch, caplog):
    model, plain, rows = model_and_rows
    monkeypatch.setattr("polymodal.serving.graph._same", lambda want, got: False)
    with caplog.at_level("WARNING", logger="polymodal.serving.graph"):
        service = ModelService(model)
    assert service.engine.runtime == "torch" and service.executor in ("onnx-network", "torchscript")
    assert any("does not answer as the model does" in r.getMessage() for r in caplog.records)
    assert not service._graph_path.parent.exists()
    np.testing.assert_allclose(probabilities(service, rows), probabilities(plain, rows), rtol=1e-5, atol=1e-6)


def test_an_export_that_fails_leaves_pytorch_serving(model_and_rows, monkeypatch):
    model, plain, rows = model_and_rows

    def broken(*args, **kwargs):
        raise RuntimeError("an operator the exporter does not know")

    monkeypatch.setattr("polymodal.optimize.export.export_onnx", broken)
    service = ModelService(model)
    assert service.engine.runtime == "torch" and service.executor == "onnx-network"
    np.testing.assert_allclose(probabilities(service, rows), probabilities(plain, rows), rtol=1e-5, atol=1e-6)


def test_without_onnx_runtime_pytorch_serves(model_and_rows, monkeypatch):
    model, plain, rows = model_and_rows
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    service = ModelService(model)
    assert service.engine.runtime == "torch" and service.executor == "torchscript"
    np.testing.assert_allclose(probabilities(service, rows), probabilities(plain, rows), rtol=1e-5, atol=1e-6)
