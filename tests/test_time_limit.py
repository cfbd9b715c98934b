"""`train.time_limit`: training stops at a time budget (Lightning's max_time), early stopping still applying within
it, keeps the best epoch's weights, and says how the run stopped. Timing is asserted on flags and epoch counts, not
on exact seconds, so a loaded machine does not make these tests flaky."""

from __future__ import annotations

import json
from datetime import timedelta

import lightning.pytorch as pl
import pytest

from polymodal import MultimodalPredictor
from polymodal.config import Config, ConfigError, build_config
from polymodal.training.callbacks import timer_of
from polymodal.training.checkpoint import load_checkpoint
from polymodal.training.config import TrainConfig
from polymodal.training.trainer import make_trainer

SMALL = dict(fusion="early", embed_dim=8, hidden=16, batch_size=8, lr=0.01, progress=False, accelerator="cpu", seed=0)
NEVER = 10**6  # max_epochs and patience that only the time limit can reach


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def table(tabular):
    return tabular


def _best(history: list[dict]) -> int:
    return max(range(len(history)), key=lambda i: (history[i]["val_accuracy"], -history[i]["val_loss"]))


def test_a_time_limit_stops_training_and_keeps_the_best_epochs_weights(table):
    p = MultimodalPredictor(label="y", max_epochs=NEVER, patience=NEVER, time_limit=2.0, **SMALL).fit(table)
    m = p.metrics_
    assert m["time_limited"] is True and m["stopped_by"] == "time_limit" and m["time_limit"] == 2.0
    assert 1 <= m["epochs"] < NEVER and m["stopped_epoch"] == m["epochs"] - 1
    # The Timer fires only once the budget is spent; generous above (a loaded machine), far below NEVER epochs.
    assert 2.0 <= m["train_seconds"] < 120
    hist = m["history"]
    assert len(hist) == m["epochs"] and hist[-1]["epoch"] == m["stopped_epoch"]
    # The weights left in the model are the best epoch's, as after early stopping: the validation score after fit
    # equals the best one recorded.
    best = _best(hist)
    assert hist[best]["epoch"] == m["best_epoch"]
    assert m["valid"]["accuracy"] == pytest.approx(hist[best]["val_accuracy"], abs=1e-6)


def test_without_a_limit_the_run_says_it_was_not_time_limited(table):
    m = MultimodalPredictor(label="y", max_epochs=3, patience=NEVER, **SMALL).fit(table).metrics_
    assert m["time_limited"] is False and m["stopped_by"] == "max_epochs"
    assert m["time_limit"] is None and m["stopped_epoch"] is None and m["epochs"] == 3 == len(m["history"])


def test_early_stopping_still_applies_within_the_limit(table):
    m = MultimodalPredictor(label="y", max_epochs=300, patience=1, time_limit=600.0, **SMALL).fit(table).metrics_
    assert m["time_limited"] is False and m["stopped_by"] == "early_stopping" and m["time_limit"] == 600.0
    assert m["epochs"] < 300 and m["stopped_epoch"] == m["epochs"] - 1


def test_a_resumed_run_spends_what_is_left_of_the_limit(table, tmp_path):
    """The elapsed time is part of the checkpoint: a resumed run's Timer starts where the killed one was."""
    folder = tmp_path / "ckpt"

    def fit(callbacks=None) -> dict:
        p = MultimodalPredictor(label="y", max_epochs=NEVER, patience=NEVER, time_limit=2.0, **SMALL)
        p.train_config.checkpoint_dir = str(folder)
        return p.fit(table, callbacks=callbacks).metrics_  # not saved: the checkpoint stays, as after a kill

    first = fit()
    assert first["time_limited"] and first["epochs"] >= 2, first["epochs"]  # a checkpoint after epoch 1 or later
    latest = json.loads((folder / "latest.json").read_text())
    epoch, state = load_checkpoint(folder, latest["fingerprint"])
    saved = state["callbacks"]["timer"]["time_elapsed"]["train"]
    assert epoch == latest["epoch"] and saved > 0

    class Elapsed(pl.Callback):
        seen: float | None = None

        def on_train_epoch_start(self, trainer, module):
            if self.seen is None:  # the first epoch of the resumed run, after the checkpoint was loaded
                self.seen = timer_of(trainer).time_elapsed()

    watch = Elapsed()
    second = fit([watch])
    assert second["resumed_from_epoch"] == latest["epoch"] > 0
    assert watch.seen >= saved  # not 0: the budget already spent was carried over
    assert second["time_limited"] is True


def test_the_trainer_gets_the_limit_as_max_time():
    limited = make_trainer(TrainConfig(time_limit=1.5, progress=False, accelerator="cpu"), [])
    timer = timer_of(limited)
    assert timer is not None and timer.time_remaining() == pytest.approx(timedelta(seconds=1.5).total_seconds())
    assert timer_of(make_trainer(TrainConfig(progress=False, accelerator="cpu"), [])) is None
    # The retrieval trainer goes through the same factory: the same limit, its devices handed over as they are.
    align = make_trainer(TrainConfig(time_limit=3.0, progress=False, accelerator="cpu"), [], distributed=False)
    assert timer_of(align).time_remaining() == pytest.approx(3.0)


@pytest.mark.parametrize("bad", [-1, -0.5, 0, float("nan"), float("inf")])
def test_a_time_limit_must_be_a_positive_number_of_seconds(bad):
    for make in (
        lambda: build_config(time_limit=bad),
        lambda: build_config({"train": {"time_limit": bad}}),
        lambda: MultimodalPredictor(label="y", **{"train.time_limit": bad}),
    ):
        with pytest.raises(ConfigError, match=r"train\.time_limit must be a positive number"):
            make()
    with pytest.raises(ConfigError, match=r"train\.time_limit must be float or NoneType, not 'soon'"):
        build_config(time_limit="soon")


def test_a_time_limit_is_a_setting_of_the_tree():
    assert "train.time_limit" in Config.paths() and Config().train.time_limit is None
    cfg = build_config(time_limit=90)
    assert cfg.train.time_limit == 90.0 and isinstance(cfg.train.time_limit, float)
    assert cfg.diff() == {"train.time_limit": 90.0}
    assert Config.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["train"]["time_limit"] == 90.0
    cfg.set("train.time_limit", None)
    assert cfg.train.time_limit is None


def test_alignment_training_stops_at_the_time_limit_too(tmp_path):
    """`polymodal align` trains through the same Trainer factory, so `train.time_limit` holds there as well."""
    import synth

    from polymodal.retrieval import MultimodalRetriever

    synth.make_table(tmp_path, 120, seed=3).to_csv(tmp_path / "t.csv", index=False)
    r = MultimodalRetriever(
        query=["caption"], target="image", preprocess={"image_size": 16}, embed_dim=16, dim=8, hidden=16,
        batch_size=16, max_epochs=NEVER, patience=NEVER, time_limit=2.0, progress=False, accelerator="cpu",
    )  # fmt: skip
    m = r.fit(tmp_path / "t.csv").metrics_
    assert m["time_limited"] is True and m["stopped_by"] == "time_limit" and 1 <= m["epochs"] < NEVER
    assert m["stopped_epoch"] == m["epochs"] - 1 == m["history"][-1]["epoch"]


@pytest.mark.parametrize(
    ("before", "at_end", "full", "epochs", "elapsed", "expected"),
    [
        (True, True, False, 5, 3.0, "time_limit"),  # the last epoch itself cut short
        (True, True, True, 5, 3.0, "max_epochs"),  # the budget ran out on the very last batch: nothing was cut
        (True, True, True, 3, 3.0, "time_limit"),
        (False, True, True, 3, 0.5, "early_stopping"),
        (True, True, True, 3, 3.0 - 2.0, "callback"),  # the flag was set before the budget was spent: not the Timer
        (False, False, True, 5, 0.5, "max_epochs"),
    ],
)  # fmt: skip
def test_why_a_run_stopped(before, at_end, full, epochs, elapsed, expected):
    from types import SimpleNamespace

    from polymodal.training.callbacks import StopWatch

    timer = pl.callbacks.Timer(duration=timedelta(seconds=2.0))
    timer.load_state_dict({"time_elapsed": {"train": elapsed}})  # never started: elapsed is this offset
    watch = StopWatch()
    watch.set_before_monitors, watch.set_at_end, watch.full_epoch = before, at_end, full
    trainer = SimpleNamespace(callbacks=[watch, timer], current_epoch=epochs, max_epochs=5)
    got = watch.summary(trainer, 2.0)
    assert got["stopped_by"] == expected and got["time_limited"] == (expected == "time_limit")
    assert got["stopped_epoch"] == (None if expected == "max_epochs" else epochs - 1) and got["time_limit"] == 2.0
