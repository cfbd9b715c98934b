"""One pass over the training table in `fit`: read once, schema inferred once, columns checked once; a streamed
fit infers its schema once from the head (docs/architecture.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from polymodal import MultimodalPredictor
from polymodal.training import table as table_mod

SMALL = dict(embed_dim=8, hidden=16, batch_size=16, max_epochs=1, progress=False, accelerator="cpu", seed=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 120
    df = pd.DataFrame({"a": rng.normal(size=n), "c": rng.choice(["x", "y"], size=n)})
    df["y"] = np.where(df["a"] > 0, "yes", "no")
    path = tmp_path_factory.mktemp("onepass") / "t.csv"
    df.to_csv(path, index=False)
    return path


@pytest.fixture
def counted(monkeypatch):
    """Counts of the reads, schema inferences and column checks the training table goes through."""
    calls = {"read_table": 0, "infer_schema": 0, "check_columns_training": 0}

    def counting(name, fn, only_training=False):
        def wrapper(*args, **kwargs):
            if not only_training or kwargs.get("training"):
                calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(table_mod, "read_table", counting("read_table", table_mod.read_table))
    monkeypatch.setattr(table_mod, "infer_schema", counting("infer_schema", table_mod.infer_schema))
    monkeypatch.setattr(table_mod, "check_columns", counting("check_columns_training", table_mod.check_columns, True))
    return calls


def test_fit_reads_infers_and_checks_the_table_once(csv, counted):
    p = MultimodalPredictor(label="y", **SMALL).fit(csv)
    assert counted == {"read_table": 1, "infer_schema": 1, "check_columns_training": 1}
    assert set(p.schema.inputs) == {"tabular:numeric", "tabular:categorical"}


def test_a_streamed_fit_infers_its_schema_once_from_the_head(csv, counted):
    p = MultimodalPredictor(label="y", streaming="on", **SMALL).fit(csv)
    assert p.metrics_["streaming"] is True
    assert counted["infer_schema"] == 1 and counted["check_columns_training"] == 1
    assert counted["read_table"] == 0  # chunks only: the whole table is never read at once


def test_auto_streaming_decides_without_inferring_when_the_table_surely_fits(csv, counted):
    assert table_mod.streams(MultimodalPredictor(label="y", **SMALL).config_, csv) is False
    assert counted["infer_schema"] == 0
