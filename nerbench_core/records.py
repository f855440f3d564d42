"""Result records and their store. No torch here: records can be read and tabulated anywhere.

One JSON file per case and run key (spec hash, data fingerprint, seed, mode), written atomically
(temporary file + rename) under a file lock, so concurrent pytest-xdist workers or hosts sharing a folder
lose nothing and a process killed mid-write leaves no partial record.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterable

from filelock import FileLock

SCHEMA = 1
CODE_DIR = Path(__file__).resolve().parent  # whose git commit each record carries


@dataclass
class RunRecord:
    case: str
    status: str  # passed (floor met), failed (below floor, or an error during the case), skipped
    run_key: str
    mode: str  # "full" or "quick"
    spec: dict
    spec_hash: str
    dataset: dict  # source, fingerprint, sample, sizes
    seed: int
    metrics: dict = field(default_factory=dict)  # test metrics (scored once) and the dev selection
    cost: dict = field(default_factory=dict)  # times, tokens/s, memory, MFU
    model: dict = field(default_factory=dict)  # backend, method, quantization, attention, params
    floor: float | None = None
    error: str | None = None
    synthetic: bool = False
    label: str = ""  # --label: names the set-up of this run (e.g. a perf variant), for tables that compare runs
    environment: dict = field(default_factory=dict)  # versions, git commit, machine
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    schema: int = SCHEMA

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def f1(self) -> float | None:
        return self.metrics.get("test", {}).get("f1")


def run_key(spec_hash: str, fingerprint: str, seed: int, mode: str, synthetic: bool = False) -> str:
    """Identity of a run: the same key means the same work, so a stored record can stand for it."""
    raw = f"{spec_hash}:{fingerprint}:{seed}:{mode}:{'synthetic' if synthetic else 'real'}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


@dataclass
class Baselines:
    """Stored results to compare with: ``{mode: {case: record dict}}`` in one JSON file."""

    path: Path
    tolerance: float  # F1 points (0-100 scale) a case may fall below its baseline
    data: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, tolerance: float) -> "Baselines":
        path = Path(path)
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return cls(path, tolerance, data)

    def f1(self, case: str, mode: str) -> float | None:
        entry = self.data.get(mode, {}).get(case)
        return entry["metrics"]["test"]["f1"] if entry else None

    def for_records(self, records: Iterable[RunRecord]) -> dict[str, float]:
        """Baseline F1 per case, for the table's change column."""
        found = {r.case: self.f1(r.case, r.mode) for r in records}
        return {case: f1 for case, f1 in found.items() if f1 is not None}

    def regression(self, record: RunRecord) -> str | None:
        base = self.f1(record.case, record.mode)
        if base is None or record.f1 is None:
            return None
        drop = 100 * (base - record.f1)
        if drop > self.tolerance:
            return (f"{record.case}: test F1 {100 * record.f1:.2f} is {drop:.2f} points below the baseline "
                    f"{100 * base:.2f} in {self.path} (tolerance {self.tolerance:.2f})")
        return None


# ---------------------------------------------------------------- environment


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
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return (("commit", commit), ("dirty", bool(dirty) if dirty is not None else None),
            ("branch", git("rev-parse", "--abbrev-ref", "HEAD")))


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


# ---------------------------------------------------------------- the store


class ResultStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(self.folder / ".store.lock"))

    def path_for(self, record: RunRecord) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in record.case)
        return self.folder / f"{safe}-{record.mode}-{record.run_key}.json"

    def write(self, record: RunRecord) -> Path:
        target = self.path_for(record)
        data = json.dumps(record.to_dict(), indent=1, sort_keys=True, default=str)
        with self.lock:
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".json.part")  # never matches *.json
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)  # atomic on POSIX and Windows
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return target

    def records(self) -> list[RunRecord]:
        out = []
        for p in sorted(self.folder.glob("*.json")):
            try:
                out.append(RunRecord.from_dict(json.loads(p.read_text(encoding="utf-8"))))
            except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
                continue  # not a record of ours; a rename never leaves a half-written one
        return out

    def find(self, key: str, case: str | None = None) -> RunRecord | None:
        """The stored record for a run key (latest first), if it finished (passed or failed its floor)."""
        hits = [r for r in self.records() if r.run_key == key and (case is None or r.case == case)]
        hits = [r for r in hits if r.status in ("passed", "failed") and r.error is None]
        return max(hits, key=lambda r: r.created) if hits else None


def load_records(paths: Iterable[str | Path]) -> list[RunRecord]:
    """Records from folders and files (e.g. result folders of several hosts), newest per case and key."""
    found: dict[tuple, RunRecord] = {}
    for p in map(Path, paths):
        files = sorted(p.glob("*.json")) if p.is_dir() else [p]
        for f in files:
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(data, dict) and "case" not in data:  # a baselines file: {mode: {case: record}}
                data = [r for per_mode in data.values() if isinstance(per_mode, dict) for r in per_mode.values()]
            for d in data if isinstance(data, list) else [data]:
                if not isinstance(d, dict) or "case" not in d:
                    continue
                r = RunRecord.from_dict(d)
                k = (r.case, r.run_key)
                if k not in found or r.created > found[k].created:
                    found[k] = r
    return list(found.values())


def merge_baselines(records: Iterable[RunRecord], path: str | Path) -> Path:
    """Merge finished, real (not synthetic) records into a baselines file: ``{mode: {case: record}}``."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for r in records:
        if r.status in ("passed", "failed") and r.error is None and not r.synthetic:
            d = r.to_dict()
            d["metrics"] = {k: v for k, v in d["metrics"].items() if k != "dev_history"}
            d["cost"].pop("reused", None)
            data.setdefault(r.mode, {})[r.case] = d
    path.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path
