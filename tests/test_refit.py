"""`train.refit`: after validation has chosen the epoch, the same network is trained again on the training and the
validation rows together for that many epochs, and that model is kept. And `Features.concat`, which it relies on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polymodal import MultimodalPredictor
from polymodal.preprocess.features import Features
from tests.synth import FAST
from tests.test_split_by import grouped_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(f: Features) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in f.inputs.items()}


def test_concat_keeps_each_row_with_and_without_item_tables():
    items = np.arange(12, dtype=np.float32).reshape(4, 3)  # 4 distinct pictures, shared by rows
    whole = Features(
        {"img": items, "num": np.arange(6, dtype=np.float32)[:, None]},
        np.ones((6, 2), bool),
        ["img", "num"],
        {"img": np.array([0, 1, 1, 2, 3, 3])},
    )
    a, b = whole.take(np.array([0, 2, 4])), whole.take(np.array([1, 3, 5]))
    shared = a.concat(b)  # both views of one item table: kept once
    assert shared.stored["img"] is items
    other = Features({"img": items[:2] + 100, "num": np.zeros((2, 1), np.float32)}, np.zeros((2, 2), bool),
                     ["img", "num"], {"img": np.array([1, 0])})  # fmt: skip
    separate = a.concat(other)  # two tables: one after the other, the second index shifted
    assert len(separate.stored["img"]) == 6
    for joined, first, second in ((shared, a, b), (separate, a, other)):
        rows, r1, r2 = _rows(joined), _rows(first), _rows(second)
        assert len(joined) == len(first) + len(second)
        for k in rows:
            assert np.array_equal(rows[k], np.concatenate([r1[k], r2[k]]))
        assert np.array_equal(joined.present, np.concatenate([first.present, second.present]))


def test_refit_trains_on_every_row_for_the_chosen_epochs(tmp_path):
    table = grouped_table(tmp_path)
    settings = dict(label="y", split_by="speaker", seed=0) | FAST | {"max_epochs": 4}
    plain = MultimodalPredictor(**settings).fit(table)
    refit = MultimodalPredictor(**settings, refit=True).fit(table)
    m, r = plain.metrics_, refit.metrics_
    # the selection run is the plain fit: same best epoch, same validation scores
    assert r["best_epoch"] == m["best_epoch"] and r["valid"]["accuracy"] == m["valid"]["accuracy"]
    assert r["valid_groups"] == m["valid_groups"]
    assert r["refit"]["rows"] == m["train_rows"] + m["valid_rows"] == 240
    assert r["refit"]["epochs"] == m["best_epoch"] + 1
    assert r["refit"]["stopped_by"] == "max_epochs"
    w1, w2 = plain.engine.net.state_dict(), refit.engine.net.state_dict()
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)  # another model: it saw the validation speakers
    # seeded: the same refit again gives the same model; it saves and loads like any other
    again = MultimodalPredictor(**settings, refit=True).fit(table)
    p1, p2 = refit.predict_proba(table), again.predict_proba(table)
    assert np.allclose(p1.to_numpy(), p2.to_numpy())
    refit.save(tmp_path / "model")
    loaded = MultimodalPredictor.load(tmp_path / "model")
    assert np.allclose(loaded.predict_proba(table).to_numpy(), p1.to_numpy(), atol=1e-6)
    assert loaded.config_.train.refit is True


def test_refit_on_every_input_kind(synth_split):
    """Images (stored as distinct items when rows share them), audio, text, numbers and categories, empty cells."""
    train, test = synth_split
    p = MultimodalPredictor(label="y", fusion="attention", refit=True, **FAST).fit(train)
    assert p.metrics_["refit"]["rows"] == p.metrics_["train_rows"] + p.metrics_["valid_rows"]
    assert set(p.predict(test).unique()) <= set(p.engine.task.classes)
    assert 0.0 <= p.evaluate(test)["accuracy"] <= 1.0


def test_fit_command_refit_flag(tmp_path):
    import json

    from typer.testing import CliRunner

    from polymodal.cli import app

    table = grouped_table(tmp_path)
    args = ["fit", str(table), "--label", "y", "--split-by", "speaker", "--refit", "--max-epochs", "2",
            "--embed-dim", "8", "-o", str(tmp_path / "m")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "refit on all 240 rows" in result.output
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["refit"]["rows"] == 240 and metrics["refit"]["epochs"] == metrics["best_epoch"] + 1


def test_refit_on_a_streamed_table_says_it_is_not_applied(tmp_path, caplog):
    import logging

    table = grouped_table(tmp_path)
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        p = MultimodalPredictor(label="y", streaming="on", refit=True, **FAST | {"max_epochs": 1}).fit(table)
    assert "train.refit does not apply to a streamed table" in caplog.text
    assert "refit" not in p.metrics_ and p.metrics_["streaming"] is True
