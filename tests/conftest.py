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
def pinned_torch():
    """For a file whose module-scoped fixtures train and whose scores are asserted: one torch thread, seed 0 for
    torch, numpy and random, and torch's default global settings, whatever ran before; all restored after the file.

    A fit's float summation order follows the thread count, and a fit near a plateau can land on either side of it
    (tests/test_token_fusion.py: the old token-transformer schedule gave 0.91 on 2 threads, 0.82 on 1)."""
    import random

    import numpy as np
    import torch

    saved = (
        torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled(),
        torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.get_float32_matmul_precision(), torch.get_rng_state(), np.random.get_state(), random.getstate(),
    )  # fmt: skip
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    torch.set_grad_enabled(True)
    torch.use_deterministic_algorithms(False)
    torch.set_float32_matmul_precision("highest")
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    threads, dtype, grad, deterministic, warn_only, precision, torch_rng, np_rng, py_rng = saved
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.set_float32_matmul_precision(precision)
    torch.set_rng_state(torch_rng)
    np.random.set_state(np_rng)
    random.setstate(py_rng)


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
