"""Atomic writes (polymodal.files): whole or nothing, the old target kept on failure, and the permissions a plainly
created folder or file would get from the umask (not tempfile's owner-only 0700/0600)."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import synth
from PIL import Image

from polymodal import files
from polymodal.model.artifact import atomic_folder as artifact_atomic_folder
from polymodal.model.artifact import save_safetensors, write_json


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Set the process umask for the block and always restore the old one, so no test leaks it."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def modes(folder: Path) -> dict[str, int]:
    """Mode of the folder itself ('.') and of everything under it, by relative path."""
    out = {".": mode(folder)}
    for p in sorted(folder.rglob("*")):
        out[p.relative_to(folder).as_posix()] = mode(p)
    return out


def assert_modes(folder: Path, dirs: int, regular: int) -> None:
    found = modes(folder)
    assert len(found) > 1, found  # something was written besides the folder
    for rel, m in found.items():
        want = dirs if (folder / rel).is_dir() else regular
        assert m == want, f"{rel}: {oct(m)} instead of {oct(want)} (all: { {k: oct(v) for k, v in found.items()} })"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A fitted predictor (caption + tabular columns, one epoch): only its save is under test here."""
    import torch

    from polymodal import MultimodalPredictor

    torch.manual_seed(0)
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("tiny")
    table = synth.make_table(folder, 48, seed=3)
    options = dict(synth.FAST, max_epochs=1, embed_dim=8, hidden=8, batch_size=16, seed=0)
    return MultimodalPredictor(label="y", fusion="early", ignore=["image", "clip", "score"], **options).fit(table)


@pytest.mark.parametrize(("mask", "dirs", "regular"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_saved_model_folder_follows_the_umask(tiny_model, tmp_path, mask, dirs, regular):
    target = tmp_path / "models" / "m1"
    with umask(mask):
        tiny_model.save(target)
        assert_modes(target, dirs, regular)
        assert {"config.json", "model.safetensors", "preprocess.json", "metrics.json"} <= set(os.listdir(target))
        # Saved again over itself: still the umask's modes, and nothing temporary left beside it.
        tiny_model.save(target)
        assert_modes(target, dirs, regular)
    assert os.listdir(target.parent) == ["m1"]


def test_write_json_replaces_an_owner_only_file_with_the_umask_mode(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("{}")
    os.chmod(path, 0o600)  # as an older version wrote it
    with umask(0o022):
        write_json(path, {"accuracy": float("nan"), "n": np.int64(3)})
    assert mode(path) == 0o644 and path.read_text().replace(" ", "").replace("\n", "") == '{"accuracy":null,"n":3}'


def test_safetensors_weights_follow_the_umask(tmp_path):
    """safetensors' save_file writes through its own 0600 temporary file; save_safetensors gives the umask's mode."""
    import torch
    from safetensors.torch import load_file

    with umask(0o022):
        save_safetensors({"w": torch.arange(3.0)}, tmp_path / "w.safetensors")
        assert files.plain_file_mode(tmp_path) == 0o644
    assert mode(tmp_path / "w.safetensors") == 0o644
    assert load_file(str(tmp_path / "w.safetensors"))["w"].tolist() == [0.0, 1.0, 2.0]
    with umask(0o077):
        assert files.plain_file_mode(tmp_path) == 0o600
    assert os.listdir(tmp_path) == ["w.safetensors"]  # no probe left


def test_an_error_inside_the_folder_writer_keeps_the_old_folder_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "kept.txt").write_text("old")
    with pytest.raises(RuntimeError, match="half way"):
        with files.atomic_folder(target) as tmp:
            assert tmp.parent == target.resolve().parent and tmp != target.resolve()
            (tmp / "kept.txt").write_text("new")
            (tmp / "partial.bin").write_bytes(b"x" * 10)
            raise RuntimeError("half way")
    assert os.listdir(tmp_path) == ["out"]  # no temporary folder left behind
    assert os.listdir(target) == ["kept.txt"] and (target / "kept.txt").read_text() == "old"
    # A new target that fails is not created at all.
    with pytest.raises(KeyboardInterrupt), files.atomic_folder(tmp_path / "new") as tmp:
        (tmp / "a").write_text("a")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["out"]


def test_a_failing_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "kept.txt").write_text("old")
    real = os.replace

    def replace(src, dst):  # the rename of the finished folder onto the target fails (e.g. a full disk's EIO)
        if ".tmp-" in os.fspath(src):
            raise OSError(5, "simulated")
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(OSError, match="simulated"), files.atomic_folder(target) as tmp:
        (tmp / "kept.txt").write_text("new")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["out"] and (target / "kept.txt").read_text() == "old"


def test_the_folder_writer_replaces_an_existing_folder_whole(tmp_path):
    assert artifact_atomic_folder is files.atomic_folder  # one writer, importable from both places
    target = tmp_path / "a" / "b"  # parents are created
    with files.atomic_folder(target) as tmp:
        (tmp / "one").write_text("1")
    with files.atomic_folder(target) as tmp:
        (tmp / "two").write_text("2")
    assert os.listdir(target) == ["two"] and os.listdir(target.parent) == ["b"]


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_file_writers_keep_old_content_on_failure_and_follow_the_umask(tmp_path, mask):
    path = tmp_path / "t.txt"
    with umask(mask):
        files.write_text(path, "old\n")
        assert mode(path) == 0o666 & ~mask
        with pytest.raises(ValueError, match="boom"), files.atomic_open(path, "w") as f:
            f.write("new, but not finished")
            f.flush()
            raise ValueError("boom")
        assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["t.txt"]
        with pytest.raises(ValueError, match="boom"), files.atomic_path(path) as tmp:
            tmp.write_bytes(b"new")
            raise ValueError("boom")
        assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["t.txt"]
        with files.atomic_path(tmp_path / "df.csv") as tmp:
            pd.DataFrame({"a": [1, 2]}).to_csv(tmp, index=False)
        files.write_bytes(path, b"\x00new")
        assert path.read_bytes() == b"\x00new" and mode(path) == mode(tmp_path / "df.csv") == 0o666 & ~mask
    assert sorted(os.listdir(tmp_path)) == ["df.csv", "t.txt"]
    with pytest.raises(ValueError, match="mode"), files.atomic_open(path, "a"):
        pass


def test_anonymized_table_folder_follows_the_umask(tmp_path):
    from polymodal.privacy import PrivacySettings, anonymize_table

    source = tmp_path / "in"
    source.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(source / "a.png")
    sf.write(source / "a.wav", rng.normal(0, 0.1, 4000).astype("float32"), 8000)
    pd.DataFrame({"photo": ["a.png"], "clip": ["a.wav"], "y": [1]}).to_csv(source / "t.csv", index=False)
    settings = PrivacySettings(faces="keep", voice="keep")
    with umask(0o027):
        path, _ = anonymize_table(source / "t.csv", tmp_path / "out", settings)
        assert_modes(tmp_path / "out", 0o750, 0o640)
    assert path == tmp_path / "out" / "t.csv"
    assert {"t.csv", "anonymization_report.json", "media"} == set(os.listdir(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]
