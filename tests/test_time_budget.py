"""A study's time budget (`compare --time-limit`, `tune --time-limit`): shared across its fits, each fit stopping
within its share, and the leaderboard, report and trial table saying which were cut short and in which epoch.
Asserted on flags and epoch counts, never on exact seconds, so a loaded machine cannot make them flaky."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from polymodal.studies import budget as budget_mod
from polymodal.studies.budget import MIN_SHARE, Budget
from polymodal.studies.compare import compare
from polymodal.studies.leaderboard import cut_note, leaderboard_table
from polymodal.studies.tune import tune

SMALL = dict(embed_dim=8, hidden=16, batch_size=16, lr=0.01, progress=False, accelerator="cpu")
NEVER = 10**6  # max_epochs and patience that only the time limit can reach


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def table(tabular):
    return tabular


def test_the_budget_shares_the_time_left_over_the_fits_left(monkeypatch):
    now = {"t": 100.0}
    monkeypatch.setattr(budget_mod.time, "monotonic", lambda: now["t"])
    b = Budget(60, fits=4)
    assert b.share() == pytest.approx(15.0)
    now["t"] += 5.0  # the first fit stopped early: what it saved goes to the others
    b.spent()
    assert b.share() == pytest.approx(55.0 / 3)
    assert b.share(cap=10.0) == 10.0  # a per-fit train.time_limit stays the ceiling
    now["t"] += 100.0  # spent: every later fit still gets a minimal share, so each entry has a model
    b.spent()
    assert b.share() == MIN_SHARE
    with pytest.raises(ValueError, match="positive number of seconds"):
        Budget(0, fits=1)


def test_cut_note_names_the_seeds_and_epochs():
    assert cut_note({"seeds": 3, "time_limited_seeds": 0}) == "-"
    assert cut_note({"seeds": 3, "time_limited_seeds": 2, "stopped_epochs": [4, 5]}) == "2/3 seeds, epochs 4, 5"


def test_compare_with_a_time_limit_marks_the_entries_it_cut_short(table, tmp_path):
    out = tmp_path / "cmp"
    board = compare(table, "y", out, fusions="early", seeds=1, noise_levels=0, permutations=1, time_limit=4,
                    max_epochs=NEVER, patience=NEVER, **SMALL)  # fmt: skip
    assert board["time_limit"] == 4
    rows = board["leaderboard"]
    assert {r["entry"] for r in rows} == {"tabular:numeric only", "tabular:categorical only", "early"}
    for r in rows:  # every fit could only stop by the time limit
        assert r["time_limited_seeds"] == 1, r
        (epoch,) = r["stopped_epochs"]
        assert 0 <= epoch < NEVER
    for res in board["results"]:
        assert res["time_limited"] is True and res["epochs"] < NEVER
    saved = json.loads((out / "leaderboard.json").read_text())
    assert saved["leaderboard"][0]["time_limited_seeds"] == 1
    assert "time_limited_seeds" in (out / "leaderboard.csv").read_text().splitlines()[0]
    assert "cut short" in [c.header for c in leaderboard_table(board).columns]
    html = (out / "report.html").read_text()
    assert "cut short by the time limit" in html and "time limit 4 s" in html


def test_compare_without_a_time_limit_cuts_nothing(table, tmp_path):
    board = compare(table, "y", tmp_path / "cmp", fusions="early", seeds=1, noise_levels=0, permutations=1,
                    report=False, max_epochs=2, **SMALL)  # fmt: skip
    assert board["time_limit"] is None
    assert all(r["time_limited_seeds"] == 0 for r in board["leaderboard"])
    assert "cut short" not in [c.header for c in leaderboard_table(board).columns]


def test_tune_with_a_time_limit_gives_each_trial_its_share(table, tmp_path):
    space = {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    s = tune(table, "y", tmp_path / "tune", trials=2, time_limit=6, space=space, pruner="none", report=False,
             config={"train": {"max_epochs": NEVER, "patience": NEVER, "batch_size": 16, "progress": False},
                     "encoders": {"embed_dim": 8}, "fusion": {"hidden": 16}})  # fmt: skip
    rows = pd.read_csv(tmp_path / "tune" / "trials.csv")
    done = rows[rows["state"] == "COMPLETE"]
    assert len(done) >= 1 and s["best_folder"] is not None
    assert done["time_limited"].astype(bool).all()
    assert (done["stopped_epoch"] < NEVER).all()


def test_the_cli_takes_a_time_limit_for_fit_and_compare(table, tmp_path):
    from typer.testing import CliRunner

    from polymodal.cli import app

    runner = CliRunner()
    small = ["--embed-dim", "8", "--batch-size", "16", "--max-epochs", str(NEVER), "--patience", str(NEVER)]
    r = runner.invoke(app, ["fit", str(table), "-y", "y", "-o", str(tmp_path / "m"), "--time-limit", "2", *small])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["time_limited"] is True and metrics["time_limit"] == 2.0
    r = runner.invoke(app, ["fit", str(table), "-y", "y", "-o", str(tmp_path / "m2"), "--time-limit", "-3"])
    assert r.exit_code == 2 and "positive" in r.output
    r = runner.invoke(app, ["compare", str(table), "-y", "y", "-o", str(tmp_path / "c"), "--time-limit", "ten minutes"])
    assert r.exit_code == 2 and "cannot read the duration" in r.output
    assert not (tmp_path / "c").exists()  # refused before any work


def test_the_deprecated_predictor_tune_warns_and_still_returns_the_best_model(table, tmp_path):
    from polymodal import MultimodalPredictor

    p = MultimodalPredictor(label="y", max_epochs=1, **SMALL)
    with pytest.warns(DeprecationWarning, match=r"polymodal\.tune"):
        best = p.tune(table, tmp_path / "t", trials=1, pruner="none", report=False)
    assert best.tune_["best_folder"] is not None
    assert len(best.predict(table)) == len(pd.read_csv(table))


def test_a_time_limit_that_is_not_positive_is_refused_before_any_work(table, tmp_path):
    with pytest.raises(ValueError, match="positive number of seconds, not 0"):
        compare(table, "y", tmp_path / "c", time_limit=0)
    with pytest.raises(ValueError, match="positive number of seconds, not -5"):
        tune(table, "y", tmp_path / "t", time_limit=-5)
    assert not (tmp_path / "c").exists() and not (tmp_path / "t").exists()
