"""Atomic writes that honour the umask: a file or folder appears whole or not at all, with the permissions a plainly
created one would get (0755/0644 under umask 022), so that e.g. a serving account in the trainer's group can read a
model folder.

Why not tempfile.mkdtemp / mkstemp: they create 0700 folders and 0600 files on purpose (for a shared /tmp), and a
rename keeps that mode, so the finished model folder was readable by its owner only. Why not chmod afterwards to
0o777 & ~umask: the umask can only be read by setting it (os.umask), which is process-global and races with other
threads creating files meanwhile (the anonymizer's thread pool, a serving process). Instead the temporary folder or
file is created here with the mode a plain mkdir/open asks for (0o777/0o666): the kernel applies the umask (and a
default ACL of the parent, if any) exactly as for any other new file, and no global state is touched. A random name
with O_EXCL gives mkstemp's guarantees: nothing existing is opened or clobbered, no symlink is followed.

This module is the base layer: it imports nothing from polymodal.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_TRIES = 100  # random 48-bit names: a clash is already unlikely once


def _sibling(target: Path, kind: str) -> Path:
    """A hidden name beside `target` (same folder, so same file system: the rename is atomic)."""
    return target.with_name(f".{target.name}.{kind}-{secrets.token_hex(6)}")


def make_temp_dir(target: str | os.PathLike[str], kind: str = "tmp") -> Path:
    """Create a new empty folder beside `target` with a plain mkdir's mode (0o777 & ~umask); return its path."""
    target = Path(target)
    for _ in range(_TRIES):
        tmp = _sibling(target, kind)
        try:
            os.mkdir(tmp, 0o777)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {target}")


def make_temp_file(target: str | os.PathLike[str]) -> tuple[int, Path]:
    """Create a new empty file beside `target` with a plain open's mode (0o666 & ~umask); return (fd, path)."""
    target = Path(target)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
    flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(_TRIES):
        tmp = _sibling(target, "tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {target}")


def plain_file_mode(folder: str | os.PathLike[str]) -> int:
    """The permission bits a plainly created file gets in `folder` now (0o666 & ~umask, or what a default ACL
    gives). Read from a probe file, not os.umask: see the module's docstring."""
    fd, probe = make_temp_file(Path(folder) / "mode-probe")
    try:
        return stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        probe.unlink()


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give a file that a library wrote owner-only the mode a plainly created file beside it would have. Needed
    after safetensors' save_file: it writes through its own 0600 temporary file and renames it onto `path`."""
    os.chmod(path, plain_file_mode(Path(path).parent))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename the finished `tmp` to `target`. Whatever was at `target` is moved aside first (a folder cannot be
    renamed onto a non-empty one) and put back if the second rename fails, so a failure keeps the old target.
    Only a hard kill between the two renames leaves no target; the old one is then intact at .<name>.old-*."""
    if not os.path.lexists(target):
        os.replace(tmp, target)
        return
    old = _sibling(target, "old")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    _remove(old)


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new temporary sibling folder to write into; on success it replaces `folder` (whatever was there),
    on error it is removed and `folder` is left as it was. Never a half-written `folder`. Parents are created."""
    folder = Path(folder).resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(folder)
    try:
        yield tmp
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield the path of a new empty temporary file beside `path`, for writers that take a path (safetensors,
    pandas, ONNX); on success it replaces `path`, on error it is removed and `path` keeps its old content.
    The new file has the umask's mode, not the old file's: a file written 0600 by an older version is fixed."""
    path = Path(path)
    fd, tmp = make_temp_file(path)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", encoding: str | None = None, newline: str | None = None
) -> Iterator[IO[Any]]:
    """Like open(path, mode) for writing ("w" or "wb"), but into a temporary file beside `path` that replaces it
    when the block ends without error; on error it is removed and `path` keeps its old content."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    fd, tmp = make_temp_file(path)
    try:
        try:
            f = os.fdopen(fd, mode, encoding=encoding, newline=newline) if mode == "w" else os.fdopen(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        with f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text(
    path: str | os.PathLike[str], text: str, encoding: str | None = None, newline: str | None = None
) -> None:
    """Path.write_text, atomically (see `atomic_open`)."""
    with atomic_open(path, "w", encoding=encoding, newline=newline) as f:
        f.write(text)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Path.write_bytes, atomically (see `atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)
