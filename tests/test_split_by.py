"""Grouped splits (`data.split_by`): a group is never on both sides of a split, in fit, in compare's
leave-groups-out folds and in tune's trials; the hint when a column looks like a group id; the errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polymodal.config import Config
from polymodal.data.schema import infer_schema
from polymodal.data.stream import valid_mask
from polymodal.errors import UserError
from polymodal.training.table import group_folds, group_split, pick_groups

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {"max_epochs": 2, "batch_size": 32, "embed_dim": 8, "hidden": 8, "progress": False}


def grouped_table(folder: Path, n: int = 240, groups: int = 8, seed: int = 0) -> Path:
    """A tabular task with a `speaker` column: the label depends on the numbers, and each speaker has a bias."""
    rng = np.random.default_rng(seed)
    speaker = rng.integers(0, groups, size=n)
    a, b = rng.normal(size=n), rng.normal(size=n)
    y = np.where(a + b + 0.3 * (speaker % 3) > 0.5, "yes", "no")
    df = pd.DataFrame({"a": a, "b": b, "speaker": [f"s{k}" for k in speaker], "y": y})
    path = Path(folder) / "grouped.csv"
    df.to_csv(path, index=False)
    return path


def _cfg(**data) -> Config:
    return Config.from_dict({"data": {"label": "y"} | data})


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_split_keeps_groups_whole(tmp_path, fraction, seed):
    df = pd.read_csv(grouped_table(tmp_path, seed=seed))
    cfg = _cfg(split_by="speaker", valid_fraction=fraction)
    cfg.train.seed = seed
    schema = infer_schema(df, "y", {}, ["speaker"])
    tr, va = group_split(cfg, df, schema)
    assert len(tr) and len(va) and len(tr) + len(va) == len(df)
    assert not set(df.speaker.iloc[tr]) & set(df.speaker.iloc[va])
    again = group_split(cfg, df, schema)  # same seed, same rows
    assert np.array_equal(np.sort(again[1]), np.sort(va))


def test_regression_label_splits_by_group_too(tmp_path):
    df = pd.read_csv(grouped_table(tmp_path))
    df["y"] = df.a * 2.0
    schema = infer_schema(df, "y", {}, ["speaker"])
    tr, va = group_split(_cfg(split_by="speaker", valid_fraction=0.3), df, schema)
    assert not set(df.speaker.iloc[tr]) & set(df.speaker.iloc[va])
    assert 0.1 < len(va) / len(df) < 0.6


def test_pick_groups_whole_groups_at_least_one_never_all():
    sizes = pd.Series({"a": 50, "b": 30, "c": 20})
    for seed in range(5):
        for fraction in (0.01, 0.3, 0.99):
            chosen = pick_groups(sizes, fraction, seed)
            assert 1 <= len(chosen) < 3 and set(chosen) <= {"a", "b", "c"}
    df = pd.DataFrame({"speaker": [f"s{i % 7}" for i in range(700)]}, index=np.arange(700) + 1000)
    groups = frozenset(pick_groups(df.speaker.value_counts(), 0.3, 4))
    mask = valid_mask(df, 0.3, 4, "speaker", groups)
    chunked = np.concatenate([valid_mask(df.iloc[i : i + 50], 0.3, 4, "speaker", groups) for i in range(0, 700, 50)])
    assert np.array_equal(chunked, mask) and set(df.speaker[mask]) == groups


def test_group_folds_leave_one_out_and_balanced():
    few = pd.Series(["b", "a", "c", "a", "b"], name="speaker")
    assert group_folds(few) == [["a"], ["b"], ["c"]]
    many = pd.Series([f"g{i % 30}" for i in range(3000)], name="speaker")
    folds = group_folds(many, max_folds=5)
    assert len(folds) == 5 and sorted(sum(folds, [])) == sorted({f"g{i}" for i in range(30)})
    assert {len(f) for f in folds} == {6}
    with pytest.raises(UserError, match="two groups"):
        group_folds(pd.Series(["a", "a"], name="speaker"))


def test_fit_validates_on_unseen_groups_and_evaluate_scores_each(tmp_path):
    from polymodal import MultimodalPredictor

    path = grouped_table(tmp_path)
    p = MultimodalPredictor(label="y", split_by="speaker", **FAST).fit(path)
    valid_groups = set(p.metrics_["valid_groups"])
    assert valid_groups and valid_groups < {f"s{k}" for k in range(8)}
    df = pd.read_csv(path)
    assert p.metrics_["train_rows"] == int((~df.speaker.isin(valid_groups)).sum())
    assert p.metrics_["valid_rows"] == int(df.speaker.isin(valid_groups).sum())
    assert "speaker" not in p.schema.columns  # the group column is never an input
    m = p.evaluate(path)  # split_by doubles as the per-group scores where the table has the column
    assert m["group_by"] == "speaker" and set(m["groups"]) == {f"s{k}" for k in range(8)}
    p.save(tmp_path / "m")
    assert MultimodalPredictor.load(tmp_path / "m").config_.data.split_by == "speaker"


def test_split_column_errors_name_the_fix(tmp_path):
    from polymodal import MultimodalPredictor

    path = grouped_table(tmp_path)
    with pytest.raises(UserError, match="no column 'spk'.*--split-by"):
        MultimodalPredictor(label="y", split_by="spk", **FAST).fit(path)
    df = pd.read_csv(path)
    df.loc[[3, 17], "speaker"] = np.nan
    df.to_csv(tmp_path / "holes.csv", index=False)
    with pytest.raises(UserError, match=r"2 row\(s\).*no group \(rows 3, 17\)"):
        MultimodalPredictor(label="y", split_by="speaker", **FAST).fit(tmp_path / "holes.csv")
    df["speaker"] = "one"
    df.to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(UserError, match="single group"):
        MultimodalPredictor(label="y", split_by="speaker", **FAST).fit(tmp_path / "one.csv")


def test_hint_when_a_column_looks_like_a_group_id(tmp_path, caplog):
    from polymodal import MultimodalPredictor

    path = grouped_table(tmp_path)
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        MultimodalPredictor(label="y", **FAST).fit(path)
    hints = [r.getMessage() for r in caplog.records if "looks like a group id" in r.getMessage()]
    assert len(hints) == 1 and "--split-by speaker" in hints[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        MultimodalPredictor(label="y", split_by="speaker", **FAST).fit(path)
    assert not [r for r in caplog.records if "looks like a group id" in r.getMessage()]


def test_compare_cv_groups_holds_out_each_group(tmp_path):
    from polymodal.studies.compare import compare

    path = grouped_table(tmp_path, groups=4)
    board = compare(path, "y", tmp_path / "cmp", fusions="early", cv="groups", split_by="speaker", noise_levels=0,
                    permutations=1, report=False, **FAST)  # fmt: skip
    assert board["cv"] == "groups" and board["folds"] == [["s0"], ["s1"], ["s2"], ["s3"]]
    df = pd.read_csv(path)
    for r in board["results"]:
        held = r["held_out"]
        assert held == board["folds"][r["seed"]]
        n_test = r["metrics"]["confusion_matrix"] if "confusion_matrix" in r["metrics"] else None
        if n_test is not None:
            assert int(np.sum(n_test)) == int(df.speaker.isin(held).sum())  # tested on exactly its groups
    assert board["seeds"] == 4
    with pytest.raises(UserError, match="needs --split-by"):
        compare(path, "y", tmp_path / "bad", cv="groups", **FAST)
    with pytest.raises(UserError, match="leave --test out"):
        compare(path, "y", tmp_path / "bad", cv="groups", split_by="speaker", test=path, **FAST)


def test_tune_trials_validate_on_held_out_groups(tmp_path):
    from polymodal.studies.tune import tune

    path = grouped_table(tmp_path)
    space = {"train.lr": {"type": "categorical", "choices": [1e-3, 1e-2]}, "fusion.name": "early"}
    s = tune(path, "y", tmp_path / "tune", trials=2, space=space, keep=2, pruner="none",
             config=Config.from_dict({"data": {"split_by": "speaker"}, "train": FAST_TRAIN}))  # fmt: skip
    from polymodal import MultimodalPredictor

    best = MultimodalPredictor.load(tmp_path / "tune" / "best")
    valid_groups = set(best.metrics_["valid_groups"])
    assert valid_groups and valid_groups < {f"s{k}" for k in range(8)}
    df = pd.read_csv(path)  # every row of the other groups trained, none of the validation groups'
    assert best.metrics_["train_rows"] == int((~df.speaker.isin(valid_groups)).sum())
    assert s["best"] is not None


FAST_TRAIN = {"max_epochs": 2, "batch_size": 32, "progress": False}


def test_streamed_fit_validates_on_whole_groups(tmp_path):
    from polymodal import MultimodalPredictor

    path = grouped_table(tmp_path, n=400)
    p = MultimodalPredictor(label="y", split_by="speaker", streaming="on", chunk_rows=64, **FAST).fit(path)
    df = pd.read_csv(path)
    held = valid_mask(df, 0.1, 0, "speaker", frozenset(pick_groups(df.speaker.value_counts(), 0.1, 0)))
    assert 0 < held.sum() < len(df) and p.metrics_["valid_rows"] == int(held.sum())
    assert not set(df.speaker[held]) & set(df.speaker[~held])


def test_cli_split_by_and_cv_groups(tmp_path):
    from typer.testing import CliRunner

    from polymodal.cli import app

    path = grouped_table(tmp_path, groups=3)
    fast = ["--max-epochs", "1", "--batch-size", "32", "--embed-dim", "8"]
    r = CliRunner().invoke(app, ["fit", str(path), "--label", "y", "-o", str(tmp_path / "m"), "--split-by", "speaker",
                                 *fast])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["compare", str(path), "--label", "y", "-o", str(tmp_path / "c"), "--fusions", "early",
                                 "--split-by", "speaker", "--cv", "groups", "--noise-levels", "0", *fast])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "3 folds over 'speaker'" in r.output
    r = CliRunner().invoke(app, ["compare", str(path), "--label", "y", "-o", str(tmp_path / "d"), "--cv", "loo"])
    assert r.exit_code == 2 and "the one cross-validation is 'groups'" in r.output
