"""Several processes (issue 16): a 2-process CPU DDP fit (gloo) against the 1-process fit, and two simulated
nodes started by torchrun on 127.0.0.1. Every run goes through the CLI, as a user would start it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import synth

from polymodal import MultimodalPredictor

ARGS = ["-y", "y", "--ignore", "score", "--image-size", "16", "--sample-rate", "8000", "--embed-dim", "32",
        "--batch-size", "32", "--lr", "3e-3", "--max-epochs", "5", "--patience", "5", "--accelerator", "cpu",
        "--set", "train.progress=false", "--set", "preprocess.n_mels=32", "--set", "preprocess.n_mfcc=13"]  # fmt: skip
TOLERANCE = 0.1  # validation accuracy, 2 processes against 1 (different batch composition; chance is 0.25)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    df = synth.make_table(folder, 300, seed=7)
    for i, col in enumerate(["caption", "image", "clip", "price", "shade"]):
        df.loc[[2 + i, 50 + i], col] = None
    df.to_csv(folder / "train.csv", index=False)
    return folder / "train.csv"


def _fit(table: Path, out: Path, *extra: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = (launcher or [sys.executable, "-m"]) + ["polymodal", "fit", str(table), "-o", str(out), *ARGS, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_and_write_one_folder(table, tmp_path):
    one = _fit(table, tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    runs = tmp_path / "runs"
    runs.mkdir()
    two = _fit(table, runs / "two", "--devices", "2", "--strategy", "ddp")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("saved model to") == 1  # rank 0 reports and writes; rank 1 stays quiet

    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((runs / "two" / "metrics.json").read_text())
    assert m1["processes"] == 1 and m2["processes"] == 2
    assert m2["train_rows"] == m1["train_rows"] and m2["valid_rows"] == m1["valid_rows"]
    a1, a2 = m1["valid"]["accuracy"], m2["valid"]["accuracy"]
    assert a1 > 0.5 and abs(a1 - a2) <= TOLERANCE, (a1, a2)
    # Exactly one model folder, complete; no temporary folder or checkpoint left behind.
    assert [p.name for p in runs.iterdir()] == ["two"]
    p = MultimodalPredictor.load(runs / "two")
    synth.make_table(table.parent, 40, seed=8).to_csv(table.parent / "test8.csv", index=False)
    assert p.predict(table.parent / "test8.csv").isin([0, 1, 2, 3]).all()


def test_two_simulated_nodes_with_torchrun(table, tmp_path):
    port = str(_free_port())
    out = tmp_path / "nodes"
    procs = []
    for rank in (0, 1):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                    "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", port, "-m"]  # fmt: skip
        cmd = launcher + ["polymodal", "fit", str(table), "-o", str(out), *ARGS, "--streaming", "on",
                          "--set", "data.chunk_rows=64"]  # fmt: skip
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["streaming"] is True
    assert [p.name for p in tmp_path.iterdir()] == ["nodes"]
    model = MultimodalPredictor.load(out)
    test = synth.make_table(table.parent, 40, seed=9)
    test.to_csv(table.parent / "test9.csv", index=False)
    proba = model.predict_proba(table.parent / "test9.csv")
    assert proba.shape == (40, 4) and proba.sum(axis=1).round(4).eq(1).all()
    assert (model.predict(table.parent / "test9.csv") == test["y"]).mean() > 0.4  # it learned across nodes


def test_ddp_settings_that_cannot_work_are_refused_before_training(table, tmp_path):
    from polymodal.config import ConfigError
    from polymodal.errors import UserError

    df = synth.make_table(table.parent, 1, seed=11)
    df.to_csv(table.parent / "one.csv", index=False)
    ddp = dict(label="y", ignore=["score"], preprocess={"image_size": 16, "sample_rate": 8000}, embed_dim=32,
               max_epochs=1, progress=False, accelerator="cpu", devices=2)  # fmt: skip
    with pytest.raises(UserError, match="1 validation row.*for 2 processes: each process needs at least one"):
        MultimodalPredictor(strategy="ddp", **ddp).fit(table, table.parent / "one.csv")
    with pytest.raises(ConfigError, match="unknown DDP strategy 'ddp_teleport' \\(train.strategy\\)"):
        MultimodalPredictor(strategy="ddp_teleport", **ddp).fit(table, table.parent / "one.csv")
    assert not list(tmp_path.iterdir())
