"""How long each benchmark case is expected to take, and the longest-first split of cases over workers or hosts.

Cases differ in length by 10x (BERT against Qwen1.5-14B): spread by count, one GPU can end minutes after the other.
A case's expected seconds come from its own earlier records where it has any (measured), else from its size and
epochs (estimated, on the scale of the measured ones). The plugin orders cases by them, gives each xdist worker its
share (xdist_scheduler.py) and splits --shard by them. No torch and no pytest here.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Hashable, Iterable, Sequence, TypeVar

from .architectures import estimated_parameters
from .reporting.records import RunRecord
from .specs import ModelSpec

T = TypeVar("T", bound=Hashable)

MEASURED, ESTIMATED = "measured", "estimated"
CPU = "cpu"  # the device name of a record (or a machine) without a GPU

# An epoch costs about as much beside the model's size as 1.3B parameters do (batching, dev scoring, the host's part
# of each step): fitted to the seed suite's case times on one H100 (docs/PERFORMANCE.md 2.2, 23 s for BERT to 234 s
# for Qwen1.5-14B), where seconds / (parameters + this) stays within -17% and +33% of its mean over the six cases
# (parameters alone: a 13x spread, the small cases' fixed costs counted as nothing).
FIXED_PARAMETERS_PER_EPOCH = 1.3e9
# Seconds per parameter-epoch of those same runs: the scale of estimates when no case of the run has a record
DEFAULT_SECONDS_PER_UNIT = 5.4e-9


@dataclass(frozen=True)
class Expected:
    seconds: float
    source: str  # MEASURED (a record of the same case) or ESTIMATED (its size and epochs)


def expected_durations(specs: Sequence[ModelSpec], records: Iterable[RunRecord], mode: str, synthetic: bool,
                       prefer_device: str | None) -> dict[str, Expected]:
    """Each case's expected seconds, by spec name; ``specs`` as they run (quick schedule and overrides applied).

    ``prefer_device``: records of this GPU name (CPU for none) are taken before more recent ones of another; None
    prefers none, so that every host reading the same records finds the same times (--shard)."""
    usable = [r for r in records if _usable(r, mode, synthetic)]
    measured = {s.name: seconds for s in specs
                if (seconds := measured_seconds(s, usable, prefer_device)) is not None}
    units = work_units(specs)
    scale = fitted_scale({name: units[name] for name in measured}, measured)
    return {s.name: Expected(measured[s.name], MEASURED) if s.name in measured
            else Expected(scale * units[s.name], ESTIMATED) for s in specs}


def _usable(record: RunRecord, mode: str, synthetic: bool) -> bool:
    """A record that says how long its case takes in this kind of run: trained to the end (an error stops early, a
    reused record measured nothing new, a resumed one only the epochs after its checkpoint), on the same amount of
    data (quick or full), real or synthetic alike."""
    seconds = record.cost.get("case_seconds")
    return (record.finished and record.mode == mode and record.synthetic == synthetic
            and not record.cost.get("resumed_from") and isinstance(seconds, (int, float)) and seconds > 0)


def measured_seconds(spec: ModelSpec, records: Sequence[RunRecord], prefer_device: str | None) -> float | None:
    """The case's time in its chosen record (same case; the preferred device first, then the most recent; the run key
    breaks ties, so every process picks the same), scaled to the epochs it runs now; None where it has none."""
    # a run cut at a number of steps (a speed probe) says nothing of a whole one, nor the reverse
    own = [r for r in records if r.case == spec.name
           and (r.spec.get("train", {}).get("max_steps") or None) == (spec.train.max_steps or None)]
    if not own:
        return None
    chosen = max(own, key=lambda r: (prefer_device is not None and device_of(r) == prefer_device, r.created, r.run_key))
    return chosen.cost["case_seconds"] * _epochs_ratio(spec, chosen)


def device_of(record: RunRecord) -> str:
    """The GPU a record ran on, by name (torch's, which nvidia-smi -L shows too), or CPU."""
    gpu = record.environment.get("machine", {}).get("gpu") or {}
    return gpu.get("name") or CPU


def _epochs_ratio(spec: ModelSpec, record: RunRecord) -> float:
    """A record of 1 epoch says a third of a 3-epoch run (the rest of a case is small beside its training). Runs cut
    at a number of steps (speed benchmarks) are taken as they are."""
    then = record.spec.get("train", {})
    if spec.train.max_steps or then.get("max_steps") or not isinstance(then.get("epochs"), (int, float)):
        return 1.0
    return spec.train.epochs / then["epochs"] if then["epochs"] > 0 else 1.0


def work_units(specs: Sequence[ModelSpec]) -> dict[str, float]:
    """What a case's time is taken to be proportional to: (parameters + a fixed part) x epochs. A case of unknown
    architecture counts as the median of the known ones (or as the fixed part alone where none is known)."""
    params = {s.name: estimated_parameters(s.architecture) for s in specs}
    known = [p for p in params.values() if p]
    typical = statistics.median(known) if known else 0
    return {s.name: ((params[s.name] or typical) + FIXED_PARAMETERS_PER_EPOCH) * s.train.epochs for s in specs}


def fitted_scale(units: dict[str, float], seconds: dict[str, float]) -> float:
    """Seconds per work unit, from the cases that have both (ratio of sums: the long cases weigh most, as they do
    in the run's length); the default where none has."""
    if not units or sum(units.values()) <= 0:
        return DEFAULT_SECONDS_PER_UNIT
    return sum(seconds[name] for name in units) / sum(units.values())


# ---------------------------------------------------------------- the split


def longest_first(jobs: Sequence[tuple[T, float]]) -> list[tuple[T, float]]:
    """(key, seconds) pairs, longest first; equal times keep their given order (a sort that is stable, so that the
    same jobs in the same order come out the same everywhere)."""
    return sorted(jobs, key=lambda job: -job[1])


def lpt_partition(jobs: Sequence[tuple[T, float]], parts: int, loads: Sequence[float] | None = None) -> list[list[T]]:
    """Longest processing time first: each job, longest first, goes to the part with the least expected time so
    far (``loads``: what each part holds already; ties: the lowest index). Every job lands in exactly one part, in
    longest-first order within it; the longest part is at most 4/3 of the best possible split (Graham, 1969)."""
    if parts < 1:
        raise ValueError(f"parts = {parts}: expected at least 1")
    load = list(loads) if loads is not None else [0.0] * parts
    split: list[list[T]] = [[] for _ in range(parts)]
    for key, seconds in longest_first(jobs):
        part = min(range(parts), key=lambda i: (load[i], len(split[i]), i))  # jobs of no known time: spread out
        split[part].append(key)
        load[part] += seconds
    return split


def worth_taking(idle_load: float, busy_load: float, queued: Sequence[tuple[T, float]]) -> list[T]:
    """Which of a busy worker's queued (not yet started) jobs a worker about to run out of work should take over:
    from the end of the busy one's queue (what it would reach last), each job that ends the pair's work sooner,
    i.e. whose time added to the idle worker's still leaves it under what the busy one would have had."""
    taken = []
    for key, seconds in reversed(queued):
        if idle_load + seconds < busy_load:
            taken.append(key)
            idle_load += seconds
            busy_load -= seconds
    return taken
