from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import synth  # noqa: E402

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


@pytest.fixture
def one_torch_thread():
    """Tiny models: one torch thread each, so a shared CPU is not spent spinning idle threads (and a test's float
    summation order does not depend on what ran before it); the count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tabular(tmp_path_factory) -> Path:
    """A small tabular task (synth.write_tabular): an epoch is a fraction of a second."""
    return synth.write_tabular(tmp_path_factory.mktemp("tabular"))


@pytest.fixture(scope="session")
def synth_split(tmp_path_factory) -> tuple[Path, Path]:
    """(train.csv, test.csv) of the generated image+text task, with audio and tabular columns beside."""
    return synth.write_split(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="session")
def fitted(synth_split):
    """One fitted predictor per fusion on image + caption, shared by the tests that only use it."""
    from polymodal import MultimodalPredictor

    train, _ = synth_split
    return {
        fusion: MultimodalPredictor(
            label="y", fusion=fusion, ignore=["clip", "price", "shade", "score"], **synth.FAST
        ).fit(train)
        for fusion in ("early", "late", "attention")
    }
