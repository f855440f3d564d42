"""Every file and folder nerbench writes is written beside its place and renamed into it: a reader never sees half
of one, and a process killed mid-write leaves nothing a later run would mistake for a finished file.

One helper for records, saved predictions, the data cache, baselines, cached model folders and checkpoints.
A leaf: no other nerbench module, no torch.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import FileLock

FILE_MODE = 0o666  # as open() creates files: the umask decides (mkstemp alone would make them 0600)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.fchmod(fd, FILE_MODE & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: Any, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(data, indent=indent, sort_keys=True, default=str) + "\n")


def lock(path: str | Path) -> FileLock:
    """A lock file beside ``path`` (``path.lock``), shared by processes and hosts that see the same folder."""
    return FileLock(str(path) + ".lock")


@contextlib.contextmanager
def folder(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; when the block ends without error it becomes ``target``."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.part")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed writer
    try:
        yield tmp
        shutil.rmtree(target, ignore_errors=True)
        tmp.replace(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def folder_once(target: str | Path, write: Callable[[Path], None], done: str = "config.json") -> Path:
    """A folder written once: later calls (and other processes, which wait on the lock) find it complete.
    ``done`` names a file that only a finished folder holds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with lock(target):
        if not (target / done).is_file():
            with folder(target) as tmp:
                write(tmp)
    return target


def check_writable(path: str | Path, what: str) -> str | None:
    """Why ``path`` (a folder, created if missing) cannot hold nerbench's files and locks, or None where it can."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = write_text(path / ".nerbench-write-test", "")
        with lock(probe).acquire(timeout=10):
            pass
        probe.unlink()
        Path(str(probe) + ".lock").unlink(missing_ok=True)
    except (OSError, TimeoutError) as err:
        return f"{what} {path}: cannot write there ({type(err).__name__}: {err})"
    return None
