"""Issue 9, part 5: training that survives `kill -9`: a checkpoint per epoch beside the output folder, resumed by
running the same `fit` again, ending with the same weights as an uninterrupted run, bit for bit (CPU)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from polymodal.cli import checkpoint_folder
from polymodal.training.checkpoint import CheckpointMismatch, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def _table(path: Path, n: int = 150) -> Path:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=n), rng.normal(size=n)
    c = rng.choice(["x", "y", "z"], size=n)
    y = np.where(a + b + (c == "x") > 0.5, "yes", "no")
    pd.DataFrame({"a": a, "b": b, "c": c, "y": y}).to_csv(path, index=False)
    return path


def _fit_cmd(table: Path, out: Path, *extra: str) -> list[str]:
    # Many tiny batches make an epoch long enough to be killed in the middle of; the result does not depend on it.
    return [sys.executable, "-m", "polymodal", "fit", str(table), "-y", "y", "-o", str(out), "--fusion", "early",
            "--max-epochs", "3", "--batch-size", "2", "--patience", "10", "--embed-dim", "8", "--accelerator", "cpu",
            *extra]  # fmt: skip


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def test_a_fit_killed_mid_epoch_resumes_and_ends_with_the_same_weights(tmp_path):
    table = _table(tmp_path / "t.csv")
    ref_out, out = tmp_path / "ref", tmp_path / "m"
    ckpt = checkpoint_folder(out)
    assert ckpt == tmp_path / ".m.checkpoint"
    ref = subprocess.Popen(_fit_cmd(table, ref_out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run = subprocess.Popen(_fit_cmd(table, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        # Kill as soon as the checkpoint after epoch 1 exists: the run is then inside epoch 2 of 3.
        while not ((ckpt / "latest.json").exists() and '"epoch": 1' in (ckpt / "latest.json").read_text()):
            assert run.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        run.send_signal(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL
    finally:
        run.kill()
    assert not out.exists()
    shutil.copytree(ckpt, tmp_path / "kept.checkpoint")  # for the mismatch test below
    again = subprocess.run(_fit_cmd(table, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming from the checkpoint after epoch 1" in again.stdout
    assert "epoch 1/3" not in again.stdout and "epoch 2/3" in again.stdout  # epoch 1 is not trained again
    assert ref.wait(timeout=300) == 0, ref.stdout.read().decode()
    assert not ckpt.exists() and not checkpoint_folder(ref_out).exists()  # removed once the model is written
    a, b = load_file(str(ref_out / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit for bit

    # The same checkpoint with other settings is refused, naming --restart; --restart starts over.
    from polymodal import MultimodalPredictor

    p = MultimodalPredictor(label="y", fusion="early", max_epochs=1, batch_size=2, embed_dim=8, lr=0.01, progress=False)
    p.train_config.checkpoint_dir = str(tmp_path / "kept.checkpoint")
    with pytest.raises(CheckpointMismatch, match="--restart"):
        p.fit(table)
    p.train_config.restart = True
    p.fit(table).save(tmp_path / "restarted")
    assert p.metrics_["resumed_from_epoch"] == 0 and not (tmp_path / "kept.checkpoint").exists()


def test_checkpoint_round_trip_keeps_types_and_bits(tmp_path):
    opt_state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 3)}, 1: {"step": torch.tensor(3.0)}},
        "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "params": [0, 1], "foreach": None}],
    }
    state = {"opt": opt_state, "rng": np.arange(5, dtype=np.uint32), "best": [0.5, -0.25], "nan": float("nan")}
    save_checkpoint(tmp_path, 3, "fp", state)
    epoch, back = load_checkpoint(tmp_path, "fp")
    assert epoch == 3 and back["best"] == [0.5, -0.25] and np.isnan(back["nan"])
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], opt_state["state"][0]["exp_avg"])
    assert back["opt"]["param_groups"][0]["betas"] == (0.9, 0.999) and list(back["opt"]["state"]) == [0, 1]
    assert back["rng"].dtype == np.uint32 and back["rng"].tolist() == [0, 1, 2, 3, 4]
    save_checkpoint(tmp_path, 4, "fp", state)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["epoch-0004.json", "epoch-0004.safetensors", "latest.json"]
    with pytest.raises(CheckpointMismatch):
        load_checkpoint(tmp_path, "other")
    assert not list(tmp_path.glob("*.pkl")) and load_checkpoint(tmp_path / "none", "fp") is None
