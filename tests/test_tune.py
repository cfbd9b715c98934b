"""`polymodal tune`: pruning that really prunes, a budget that survives a killed run, crashing trials, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synth
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Small and quick: a tabular model that learns the label in a few epochs; only what a test varies is searched.
FIXED = {
    "data.ignore": ["note"],
    "fusion.name": "early",
    "encoders.embed_dim": 16,
    "fusion.hidden": 16,
    "fusion.dropout": 0.0,
    "train.batch_size": 32,
    "train.weight_decay": 0.0,
    "train.modality_dropout": 0.0,
    "train.max_epochs": 8,
    "train.patience": 8,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tabular(folder: Path, n: int = 200, seed: int = 0) -> Path:
    """label = whether x1 + x2 > 0 (with a categorical hint); learnable in a few epochs at lr 3e-3."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    y = np.where(x1 + x2 > 0, "pos", "neg")
    df = pd.DataFrame({"x1": x1, "x2": x2, "kind": np.where(x1 > 0, "up", "down"), "note": "-", "y": y})
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / "train.csv", index=False)
    return folder / "train.csv"


def run_tune(*args: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"} | (env_extra or {})
    cmd = [sys.executable, "-m", "polymodal", "tune", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def load(storage: str, name: str = "polymodal-tune"):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=storage)


def test_pruning_stops_the_learning_rates_that_cannot_learn(tmp_path):
    from optuna.trial import TrialState

    from polymodal import MultimodalPredictor
    from polymodal.studies.tune import tune

    train = tabular(tmp_path / "data")
    space = FIXED | {"train.lr": {"type": "categorical", "choices": [1e-9, 3e-3]}}
    out = tmp_path / "tune"
    s = tune(train, "y", out, trials=8, space=space, keep=2, pruner_startup=2, pruner_warmup=1, seed=1)
    study = load(f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials()
    assert len(trials) == 8 and s["verdicts"] == 8
    for t in trials:  # the callback reported the validation accuracy after every epoch it trained
        assert t.user_attrs["epochs"] == len(t.intermediate_values) >= 1
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned, "no trial was pruned"
    for t in pruned:  # only the learning rate that cannot learn is cut, and early
        assert t.params["train.lr"] == 1e-9
        assert len(t.intermediate_values) < FIXED["train.max_epochs"]
    good = [t for t in complete if t.params["train.lr"] == 3e-3]
    assert good and min(t.value for t in good) > 0.8
    assert all(t.value < 0.8 for t in complete if t.params["train.lr"] == 1e-9)
    # files: the best model loads and predicts, only the best 2 folders are kept, the table and the report
    assert s["best"]["params"]["train.lr"] == 3e-3 and s["decodes"] == 1 and s["preparations"] == 1
    best = MultimodalPredictor.load(out / "best")
    assert best.evaluate(train)["accuracy"] > 0.8
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"{n:04d}" for n in sorted(s["kept_trials"])]
    assert len(s["kept_trials"]) == 2
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 8 and set(table["state"]) == {"COMPLETE", "PRUNED"}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "<script" not in html


def test_a_crashing_trial_is_recorded_and_the_study_goes_on(tmp_path):
    from optuna.trial import TrialState

    from polymodal.studies.tune import tune

    folder = tmp_path / "data"
    synth.make_table(folder, 48, seed=3).to_csv(folder / "train.csv", index=False)
    # batch size 0 crashes inside training; two image sizes: decoded once per size, not once per trial
    space = FIXED | {
        "data.ignore": ["clip", "caption", "price", "shade", "score"],
        "train.max_epochs": 1,
        "train.batch_size": {"type": "categorical", "choices": [0, 16]},
        "preprocess.image_size": {"type": "categorical", "choices": [8, 12]},
        "train.lr": 3e-3,
    }
    s = tune(folder / "train.csv", "y", tmp_path / "tune", trials=5, space=space, pruner="none", seed=0)
    trials = load(f"sqlite:///{tmp_path / 'tune' / 'study.db'}").get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(t.params["train.batch_size"] == 0 for t in failed)
    assert all("batch_size" in t.user_attrs["error"] for t in failed)
    assert any(t.state == TrialState.COMPLETE for t in trials)
    assert len(trials) == 5 and s["verdicts"] == 5  # crashed trials count: those settings have their verdict
    sizes = {t.params["preprocess.image_size"] for t in trials if t.state == TrialState.COMPLETE}
    assert s["decodes"] <= 2 and s["decodes"] == len({t.params["preprocess.image_size"] for t in trials})
    assert sizes


def test_bad_space_label_and_storage_fail_before_any_training(tmp_path):
    from polymodal.config import ConfigError
    from polymodal.data.schema import SchemaError
    from polymodal.studies.tune import TuneError, tune

    train = tabular(tmp_path / "data")
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=r"train\.lrr.*did you mean 'train\.lr'"):
        tune(train, "y", out, space={"train.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}})
    with pytest.raises(ConfigError, match=r"train\.lr: empty range: low 0\.1 > high 0\.01"):
        tune(train, "y", out, space={"train.lr": {"type": "float", "low": 0.1, "high": 0.01}})
    with pytest.raises(ConfigError, match=r"fusion\.name: empty or missing choices"):
        tune(train, "y", out, space={"fusion.name": {"type": "categorical", "choices": []}})
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        tune(train, "y", out, space={"train.batch_size": {"type": "categorical", "choices": ["big"]}})
    with pytest.raises(SchemaError, match=r"unknown column\(s\) \['label'\]"):
        tune(train, "label", out)
    with pytest.raises(TuneError, match=r"cannot open the study storage postgresql\+psycopg://u:\*\*\*@127\.0\.0\.1:9"):
        tune(train, "y", out, storage="postgresql://u:secret@127.0.0.1:9/db")
    assert not out.exists()  # nothing written
    # the command line says the same, with exit code 2
    bad = tmp_path / "space.yaml"
    bad.write_text(yaml.safe_dump({"fusion": {"nmae": {"type": "categorical", "choices": ["early"]}}}))
    from typer.testing import CliRunner

    from polymodal.cli import app

    r = CliRunner().invoke(app, ["tune", str(train), "--label", "y", "-o", str(out), "--space", str(bad)])
    assert r.exit_code == 2 and "fusion.nmae" in r.output and "fusion.name" in r.output, r.output
    assert not out.exists()


def test_resume_after_a_killed_run_keeps_the_total_budget(tmp_path):
    from optuna.trial import TrialState

    train = tabular(tmp_path / "data")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(FIXED | {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}))
    out = tmp_path / "tune"
    args = [str(train), "--label", "y", "-o", str(out), "--trials", "4", "--space", str(space), "--pruner", "none",
            "--heartbeat", "1"]  # fmt: skip
    storage = f"sqlite:///{out / 'study.db'}"
    first = run_tune(*args)
    deadline = time.monotonic() + 420  # generous: a cold start of torch on a shared CPU
    done = 0
    while done < 2:  # kill it (no clean-up at all) once two trials have finished
        if (out / "study.db").exists():
            try:
                done = sum(t.state == TrialState.COMPLETE for t in load(storage).get_trials())
            except Exception:  # the study is not created yet
                pass
        assert first.poll() is None, first.communicate()[0]
        if time.monotonic() > deadline:
            first.kill()
            pytest.fail(f"the first run did not finish two trials:\n{first.communicate()[0][-3000:]}")
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = load(storage).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in before) in (2, 3)

    second = run_tune(*args)
    log = second.communicate(timeout=420)[0]
    assert second.returncode == 0, log
    trials = load(storage).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4, log  # a total, not 4 more
    # a trial the kill interrupted was marked failed by the heartbeat and run again
    for t in trials:
        if t.state == TrialState.FAIL:
            assert "error" not in t.user_attrs
            assert any(r.system_attrs.get("failed_trial") == t.number for r in trials)
    assert (out / "best" / "model.safetensors").exists() and "best trial" in log
