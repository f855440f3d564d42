"""Stored runs to compare with, and a regression gate that knows their noise.

``bench/baselines.json`` holds, per mode and case, the records of several seeds of the same configuration. A new
run's test F1 is judged against that distribution: it is a regression when it falls below the one-sided
prediction bound of a new draw from it, ``mean - t(1 - alpha, n - 1) * s * sqrt(1 + 1/n)``, which a run of the same
code falls below with probability ``alpha`` (1%) where seed-to-seed F1 is roughly normal. The bound's distance from
the mean is the smallest drop the gate catches half the time; a case whose distance is over :data:`NOISY` points
cannot catch a real regression and is reported as "no regression check". With fewer than :data:`MIN_SEEDS` stored
seeds the gate falls back to a fixed tolerance below their mean (``--compare-fail``), and says so.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .. import atomic
from ..stats import mean_std
from .records import RecordError, RunRecord

ALPHA = 0.01  # the gate's false-alarm rate per case
MIN_SEEDS = 3
NOISY = 5.0  # F1 points: a bound further below the mean than this catches nothing worth catching
SCHEMA = 2  # {"schema": 2, MODE: {CASE: [record, ...]}}; schema 1 was {MODE: {CASE: record}}


class BaselinesError(ValueError):
    """A baselines file that cannot be read or has the wrong shape (the message names the file)."""


@dataclass(frozen=True)
class Gate:
    n: int
    mean: float  # F1, 0-1
    std: float | None
    threshold: float | None  # a run below this is a regression
    checked: bool
    why: str  # how the threshold was set, or why there is none

    @property
    def catches(self) -> float | None:
        """The smallest drop (F1 points) the gate catches half the time."""
        return None if self.threshold is None else 100 * (self.mean - self.threshold)


def gate(f1s: list[float], tolerance: float) -> Gate:
    """The regression gate for a case whose stored seeds scored ``f1s`` (0-1); ``tolerance``: points below their mean
    that fail a run where fewer than MIN_SEEDS seeds are stored."""
    from scipy import stats

    mean, std, n = mean_std(f1s)
    if n < MIN_SEEDS:
        return Gate(n, mean, None, mean - tolerance / 100, True,
                    f"{n} stored seed{'s' if n > 1 else ''}: fixed tolerance {tolerance:.2f} points")
    threshold = mean - stats.t.ppf(1 - ALPHA, n - 1) * std * math.sqrt(1 + 1 / n)
    if 100 * (mean - threshold) > NOISY:
        return Gate(n, mean, std, None, False, f"no regression check: seed noise {100 * std:.2f} points over {n} "
                                                f"seeds, a bound {100 * (mean - threshold):.1f} points down")
    return Gate(n, mean, std, threshold, True, f"{n} seeds, false alarms {100 * ALPHA:.0f}%")


class Baselines:
    def __init__(self, path: Path, runs: dict[str, dict[str, list[dict]]], tolerance: float = 1.5):
        self.path, self.runs, self.tolerance = path, runs, tolerance

    @classmethod
    def load(cls, path: str | Path, tolerance: float = 1.5) -> "Baselines":
        """Read and check a baselines file (BaselinesError names the file and what is wrong); a missing file is an
        empty set of baselines."""
        path = Path(path)
        if not path.exists():
            return cls(path, {}, tolerance)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BaselinesError(f"{path}: not a readable baselines file ({type(err).__name__}: {err})") from None
        return cls(path, _runs_of(path, data), tolerance)

    @staticmethod
    def records_in(path: Path) -> list[RunRecord]:
        """The records in a JSON file: a baselines file, one record, or a list of records."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BaselinesError(f"{path}: not readable ({type(err).__name__}: {err})") from None
        if isinstance(data, dict) and "case" not in data:
            data = [r for per_case in _runs_of(path, data).values() for runs in per_case.values() for r in runs]
        try:
            records = [RunRecord.from_dict(d) for d in (data if isinstance(data, list) else [data])]
        except RecordError as err:
            raise BaselinesError(f"{path}: {err}") from None
        for r in records:
            r.folder = str(Path(path).parent)
        return records

    def records(self, case: str, mode: str, fingerprint: str | None = None) -> list[RunRecord]:
        """The stored runs of a case (on the data with this fingerprint, where given)."""
        found = [RunRecord.from_dict(d) for d in self.runs.get(mode, {}).get(case, [])]
        return [r for r in found if fingerprint is None or r.dataset.get("fingerprint") == fingerprint]

    def f1s(self, case: str, mode: str, fingerprint: str | None) -> list[float]:
        """The test F1 of a case's stored runs on the data with this fingerprint."""
        return [r.f1 for r in self.records(case, mode, fingerprint) if r.f1 is not None]

    def gate_for(self, record: RunRecord) -> Gate | None:
        runs = self.f1s(record.case, record.mode, record.dataset.get("fingerprint"))
        return gate(runs, self.tolerance) if runs else None

    def regression(self, record: RunRecord) -> str | None:
        """Why ``record`` is a regression against its stored runs, or None."""
        g = self.gate_for(record)
        if g is None or not g.checked or record.f1 is None or record.f1 >= g.threshold:
            return None
        return (f"{record.case}: test F1 {100 * record.f1:.2f} is below the regression bound {100 * g.threshold:.2f} "
                f"of its baseline in {self.path} (mean {100 * g.mean:.2f}; {g.why})")

    def merge(self, records: Iterable[RunRecord]) -> Path:
        """Add finished, real (not synthetic) runs of the suites' own set-up (no --label: a label marks an experiment):
        a seed already stored for a case and data is replaced, others are added. Their predicted tags are copied
        (alone, gzipped: no words or gold tags, so the baselines hold no copy of the data) into the folder beside the
        file (``baselines/`` for ``baselines.json``); with the data they were measured on, verdicts and error
        analyses can be made from the baselines without retraining (store.saved_predictions). The file is read again and written under a lock: shards or
        hosts merging into one file lose nothing."""
        with atomic.lock(self.path):
            if self.path.exists():
                self.runs = Baselines.load(self.path, self.tolerance).runs
            return self._merge(records)

    def _merge(self, records: Iterable[RunRecord]) -> Path:
        for r in records:
            if not r.finished or r.synthetic or r.label:
                continue
            runs = self.runs.setdefault(r.mode, {}).setdefault(r.case, [])
            runs[:] = [d for d in runs if not (d.get("seed") == r.seed
                                               and d.get("dataset", {}).get("fingerprint") == r.dataset.get("fingerprint"))]
            runs.append({**r.to_dict(), "predictions": self._copy_predictions(r)})
            runs.sort(key=lambda d: d.get("seed", 0))
        atomic.write_json(self.path, {"schema": SCHEMA, **self.runs})
        return self.path

    def _copy_predictions(self, record: RunRecord) -> dict:
        from .predictions import TAGS_SUFFIX, write_tags
        from .store import predictions_path, saved_predictions

        copied = {}
        for split in record.predictions:
            source = predictions_path(record, split)
            found = saved_predictions(record, split)
            if source is None or found is None:
                continue
            name = f"{self.path.stem}/{source.name.split('.conll')[0].removesuffix(TAGS_SUFFIX)}{TAGS_SUFFIX}"
            (self.path.parent / self.path.stem).mkdir(parents=True, exist_ok=True)
            write_tags(self.path.parent / name, found)
            copied[split] = name
        return copied


def _runs_of(path: Path, data) -> dict[str, dict[str, list[dict]]]:
    """{mode: {case: [record dict]}} from either schema, its shape checked."""
    if not isinstance(data, dict):
        raise BaselinesError(f"{path}: expected a JSON object {{mode: {{case: [records]}}}}, got {type(data).__name__}")
    data = {k: v for k, v in data.items() if k != "schema"}
    runs: dict[str, dict[str, list[dict]]] = {}
    for mode, per_case in data.items():
        if not isinstance(per_case, dict):
            raise BaselinesError(f"{path}: [{mode!r}] should map case names to runs, got {type(per_case).__name__}")
        for case, entries in per_case.items():
            entries = [entries] if isinstance(entries, dict) else entries  # schema 1: one record
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise BaselinesError(f"{path}: [{mode!r}][{case!r}] should be a list of records")
            for e in entries:
                try:
                    RunRecord.from_dict(e)
                except RecordError as err:
                    raise BaselinesError(f"{path}: [{mode!r}][{case!r}]: {err}") from None
            runs.setdefault(mode, {})[case] = entries
    return runs
