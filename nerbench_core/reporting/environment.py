"""What a record says about where it ran: package versions, the code's git commit, the machine."""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Iterable

CODE_DIR = Path(__file__).resolve().parent.parent  # whose git commit each record carries


def git_commit(cwd: str | Path | None = None) -> dict:
    """The commit of the code in ``cwd``, read once per process (the plugin reads it at start-up), so that a
    record names the code that ran even where the checkout moves on during a long run."""
    return dict(_git_state(str(cwd) if cwd is not None else None))


@functools.cache
def _git_state(cwd: str | None) -> tuple:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    commit, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    # A dirty checkout's commit does not say what ran: the hash of its changes does (`git diff HEAD | sha256sum`
    # gives the same), so two records with the same one ran the same tracked code.
    diff = git("diff", "HEAD") if dirty else None
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    return (("commit", commit and commit.strip()), ("dirty", bool(dirty.strip()) if dirty is not None else None),
            ("diff_sha256", hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else None),
            ("branch", branch and branch.strip()))


def versions(packages: Iterable[str] = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets",
                                          "seqeval", "unsloth", "liger-kernel")) -> dict:
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info(gpu: dict | None = None) -> dict:
    info = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
    }
    if gpu:
        info["gpu"] = gpu
        info["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")  # which card an xdist worker had
    return info


def describe(gpu: dict | None = None) -> dict:
    return {"versions": versions(), "git": git_commit(CODE_DIR), "machine": machine_info(gpu)}
