"""Two `polymodal tune` workers share one study on a real PostgreSQL server; one is killed mid-trial.

The server (Debian's `postgresql` package; `make test` installs it when missing) is started by the test on
127.0.0.1 on a free port, in a temporary folder, and stopped at the end. As root, the server runs as `nobody`
(PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from test_tune import FIXED, load, run_tune, tabular


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    assert found[-1], f"PostgreSQL's {name} is missing: apt-get install postgresql (make test does it)"
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server; yields its URL (database `tune`)."""
    # Not under pytest's tmp folder: that one is private to root, and the server may run as `nobody`.
    root = Path(tempfile.mkdtemp(prefix="polymodal-pg-"))
    data, sockets, logfile = root / "data", root / "sock", root / "server.log"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "nobody")
        shutil.chown(sockets, "nobody")
        as_user = ["runuser", "-u", "nobody", "--"]
    port = _free_port()
    subprocess.run(as_user + [_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(as_user + [_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(logfile), "-w", "start"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE tune")
        yield f"postgresql://postgres@127.0.0.1:{port}/tune"
    finally:
        subprocess.run(as_user + [_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       check=False, stdout=subprocess.DEVNULL)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgres_study_and_a_killed_trial_is_retried(tmp_path, postgres):
    from optuna.trial import TrialState

    train = tabular(tmp_path / "data")
    space = tmp_path / "space.yaml"
    # long enough trials (no early stop) that a kill lands in the middle of one
    slow = FIXED | {"train.max_epochs": 15, "train.patience": 15}
    space.write_text(yaml.safe_dump(slow | {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}))
    budget = 4
    common = ["--label", "y", "--trials", str(budget), "--space", str(space), "--pruner", "none",
              "--storage", postgres, "--study", "shared", "--heartbeat", "1", "--max-retry", "2"]  # fmt: skip
    a = run_tune(str(train), "-o", str(tmp_path / "a"), *common)
    b = run_tune(str(train), "-o", str(tmp_path / "b"), *common)
    storage = postgres.replace("postgresql://", "postgresql+psycopg://")
    killed = None
    deadline = time.monotonic() + 420  # generous: two cold starts of torch on a shared CPU
    while killed is None and time.monotonic() < deadline:  # kill worker A once it is inside a trial's epochs
        try:
            for t in load(storage, "shared").get_trials():
                worker = t.user_attrs.get("worker", "")
                if t.state == TrialState.RUNNING and worker.endswith(f":{a.pid}") and len(t.intermediate_values) >= 2:
                    a.send_signal(signal.SIGKILL)
                    killed = t.number
                    break
        except Exception:  # the study is not created yet
            pass
        assert a.poll() is None or killed is not None, a.communicate()[0]
        time.sleep(0.1)
    if killed is None:
        a.kill(), b.kill()
        pytest.fail(f"worker A never got into a trial:\n{a.communicate()[0][-3000:]}\n{b.communicate()[0][-3000:]}")
    a.wait()
    log_b = b.communicate(timeout=420)[0]
    assert b.returncode == 0, log_b

    trials = load(storage, "shared").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == budget, [(t.number, t.state.name) for t in trials]
    # the killed trial: failed by the heartbeat (no error of its own) and run again by the surviving worker
    dead = next(t for t in trials if t.number == killed)
    assert dead.state == TrialState.FAIL and "error" not in dead.user_attrs
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == dead.params
    assert {t.user_attrs["worker"].split(":")[-1] for t in complete} <= {str(a.pid), str(b.pid)}
    assert (tmp_path / "b" / "trials.csv").exists()
