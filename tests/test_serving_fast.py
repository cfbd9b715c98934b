"""The PyTorch runtime's fast forward pass for serving (model/fast.py): BatchNorm folded, dropout dropped, traced and
frozen; the same outputs as the network on the every-kind model of test_serving.py."""

import numpy as np
import pandas as pd
import pytest
import torch
from test_serving import fit_model
from torch import nn

from polymodal.fusion.early import EarlyFusion
from polymodal.model.batch import iterate_batches
from polymodal.model.fast import accelerate, fold_for_inference, traceable
from polymodal.preprocess import Features
from polymodal.serving.service import ModelService


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    model, test = fit_model(tmp_path_factory)
    with pytest.MonkeyPatch.context() as mp:  # the network's own fast paths, not the exported graph (serving/graph.py)
        mp.setattr("polymodal.serving.graph.serve_graph", lambda service: False)
        fast = ModelService(model)
    plain = ModelService(model, accelerate=False)
    features, _ = plain.engine.features(pd.read_csv(test), test.parent)
    return fast, plain, features


def checks(features, sizes=(1, 3)):
    """(inputs, present) batches of the first rows, without a distinct-items index."""
    out = []
    for n in sizes:
        batch = next(iterate_batches(features.expand().take(np.arange(n)), n))
        out.append((batch["inputs"], batch["present"]))
    return out


def test_served_outputs_equal_the_networks(services):
    fast, plain, features = services
    assert fast.accelerated and fast.engine.fast.traced is not None
    assert not plain.accelerated and plain.engine.fast is None
    rng = np.random.default_rng(0)
    hidden = rng.random(features.present.shape) < 0.4  # inputs absent in some rows, all in others
    for present in (None, ~hidden):
        for batch_size in (1, 5, 256):  # a lone request, a micro-batch, the whole table
            got = fast.engine.outputs(features, batch_size, present=present)
            want = plain.engine.outputs(features, batch_size, present=present)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_request_through_the_service_equals_the_network(services):
    fast, plain, _ = services
    one = fast.decode([fast.example_row()])
    (got,), (want,) = fast.run([one]), plain.run([one])
    np.testing.assert_allclose(list(got[0]["probabilities"].values()), list(want[0]["probabilities"].values()),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert got[0]["prediction"] == want[0]["prediction"]


def test_rows_sharing_a_file_go_through_the_network_itself(services):
    fast, plain, features = services
    rows = features.expand().take(np.array([0, 1, 0, 1, 2, 0]))
    stored = {**rows.stored, "image": features.expand().stored["image"][:3]}  # three pictures, on six rows
    shared = Features(stored, rows.present, rows.input_names, {"image": np.array([0, 1, 0, 1, 2, 0])})
    batch = next(iterate_batches(shared, 6, distinct=True))
    assert "index" in batch  # the network's own path, which reads it
    np.testing.assert_allclose(fast.engine.outputs(shared), plain.engine.outputs(rows), rtol=1e-5, atol=1e-6)


def test_folding_drops_batchnorm_and_dropout_and_keeps_outputs(services):
    _, plain, features = services
    net = plain.engine.net
    folded = fold_for_inference(net)
    kinds = {type(m) for m in folded.modules()}
    assert nn.BatchNorm2d not in kinds and nn.Dropout not in kinds
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # the served network is left as it was
    with torch.inference_mode():
        for inputs, present in checks(features):
            torch.testing.assert_close(folded(inputs, present), net(inputs, present), rtol=1e-5, atol=1e-6)


def test_a_trace_that_misses_a_python_branch_is_refused(services, monkeypatch):
    _, plain, features = services
    forward = EarlyFusion.forward

    def branchy(self, embeddings, present):  # a branch on values: the trace records only the path it took
        out = forward(self, embeddings, present)
        return out if bool(present.all()) else out * 2

    monkeypatch.setattr(EarlyFusion, "forward", branchy)
    one = features.expand().take(np.zeros(2, dtype=np.int64))
    batches = checks(one.with_present(np.ones_like(one.present)), (1,))
    batches += checks(one.with_present(np.array([[True] * one.present.shape[1], [False] * one.present.shape[1]])), (2,))
    fast = accelerate(plain.engine.net, batches)
    assert fast is not None and fast.traced is None  # the folded network, eagerly
    with torch.inference_mode():
        for inputs, present in batches:
            torch.testing.assert_close(fast(inputs, present), plain.engine.net(inputs, present))


def test_only_known_modules_are_traced(services):
    _, plain, _ = services
    net = fold_for_inference(plain.engine.net)
    assert traceable(net)

    class Foreign(nn.Module):  # e.g. a pretrained model's module, whose code may branch on values
        def forward(self, x):
            return x

    head = net.head
    net.head = nn.Sequential(Foreign())
    assert not traceable(net)
    net.head = nn.Sequential(head, nn.TransformerEncoderLayer(4, 1))  # its eval fast path depends on values
    assert not traceable(net)
    net.head = nn.Sequential(Foreign())
    assert accelerate(net, checks(services[2], (1,))) is None


def test_serve_config_trace_switch(services):
    from polymodal.serving.app import create_app
    from polymodal.serving.config import ServeConfig

    folder = str(services[0].folder)
    service = create_app(ServeConfig(model=folder)).state.service
    assert service.accelerated and service.executor == "onnx-graph"
    service = create_app(ServeConfig(model=folder, trace=False)).state.service
    assert not service.accelerated and service.executor == "pytorch"


def test_the_network_runs_in_onnx_runtime_where_installed(services):
    fast, plain, features = services
    assert fast.engine.fast.executor == "onnx-network" and fast.executor == "onnx-network"
    assert fast.describe()["executor"] == "onnx-network" and fast.describe()["runtime"] == "torch"
    assert plain.describe()["executor"] == "pytorch"
    for caption in ("red", "a small red square on a grey ground with two lines", None):  # token axis: dynamic
        rows = [{**fast.example_row(), "caption": caption}]
        (got,), (want,) = fast.run([fast.decode(rows)]), plain.run([plain.decode(rows)])
        np.testing.assert_allclose(list(got[0]["probabilities"].values()), list(want[0]["probabilities"].values()),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    for i in range(len(features)):  # lone rows of the test table
        one = features.take(np.array([i]))
        np.testing.assert_allclose(fast.engine.outputs(one), plain.engine.outputs(one), rtol=1e-5, atol=1e-6)


def test_a_batch_onnx_runtime_refuses_runs_through_pytorch(services, caplog):
    fast, plain, features = services
    runner = fast.engine.fast.onnx

    class Refusing:
        def run(self, *args, **kwargs):
            raise RuntimeError("a shape the graph does not take")

    session, runner.session, runner._warned = runner.session, Refusing(), False
    try:
        with caplog.at_level("WARNING", logger="polymodal.model.fast_onnx"):
            got = fast.engine.outputs(features, 4)
            fast.engine.outputs(features, 4)
    finally:
        runner.session = session
    np.testing.assert_allclose(got, plain.engine.outputs(features, 4), rtol=1e-5, atol=1e-6)
    assert sum("refused a batch" in r.getMessage() for r in caplog.records) == 1  # said once, not per batch


def test_without_onnx_runtime_the_trace_serves(services, monkeypatch):
    import sys

    _, plain, features = services
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    fast = accelerate(plain.engine.net, checks(features, (1, 3)))
    assert fast is not None and fast.onnx is None and fast.executor == "torchscript"
    with torch.inference_mode():
        for inputs, present in checks(features, (2,)):
            torch.testing.assert_close(fast(inputs, present), plain.engine.net(inputs, present), rtol=1e-5, atol=1e-6)
