from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import synth  # noqa: E402

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


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
