"""The state of one benchmark session: options, the store, the records of this run, the baselines.

No pytest here: the plugin creates one of these and its hooks call into it.
"""
from __future__ import annotations

import contextlib
import re
import shutil
import traceback
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import atomic
from .data import NerDataset
from .options import RunOptions
from .reporting.baselines import Baselines
from .reporting.records import RunRecord
from .reporting.store import ResultStore
from .specs import ModelSpec


class CaseFailed(RuntimeError):
    """A case raised; carries the reason but not the frames, so the case's model can be freed at once."""


@dataclass
class Outcome:
    record: RunRecord
    skipped: str | None = None  # reason, when the case could not run here
    reused: bool = False


def error_reason(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    if "out of memory" in text.lower():
        return "CUDA out of memory: " + str(err).splitlines()[0][:200]
    return text.splitlines()[0][:300]


class Session:
    def __init__(self, options: RunOptions, results_dir: str | Path, rerun: bool = False,
                 baselines: Baselines | None = None):
        self.options = options
        self.store = ResultStore(results_dir)
        self.rerun = rerun
        self.baselines = baselines
        self.records: list[RunRecord] = []
        # case label -> its progress reporter (the plugin's: terminal lines, or an xdist worker's file)
        self.progress: Callable[[str], Callable[[dict], None]] | None = None
        self.running: str | None = None  # the case being trained now

    def expected_seconds(self, cases: list[tuple[str, ModelSpec]], prefer_device: str | None,
                         use_records: bool = True, dataset: NerDataset | None = None) -> dict[str, float]:
        """Each case's expected seconds, by its id (scheduling.py): from the results folder's records where
        ``use_records``, else estimated from the cases' sizes and epochs alone. Given the ``dataset`` the cases run
        on (``case_dataset``), a case whose stored record :meth:`run` will reuse is expected to take no time: the
        order and the split over workers are those of the work left, not of the whole suite."""
        from .runner import effective_spec
        from .scheduling import expected_durations

        specs = {spec.name: effective_spec(spec, self.options) for _, spec in cases}
        records = self.store.records() if use_records else []
        expected = expected_durations(list(specs.values()), records, self.options.mode, self.options.synthetic,
                                      prefer_device)
        done = self._will_reuse(cases, dataset) if use_records and dataset is not None else set()
        return {case_id: 0.0 if case_id in done else expected[spec.name].seconds for case_id, spec in cases}

    def case_dataset(self, loaded: NerDataset) -> NerDataset:
        """The dataset the cases train on, from the one read from disk: its fixed sample under --quick. Its
        fingerprint is part of each run key, so the reuse of a record can be told only with this one."""
        from .data import SampleSize, sample

        return sample(loaded, SampleSize()) if self.options.quick else loaded

    def _will_reuse(self, cases: list[tuple[str, ModelSpec]], dataset: NerDataset) -> set[str]:
        """The ids of the cases that :meth:`run` would answer from a stored record now, without training."""
        return {case_id for case_id, spec in cases if self.reusable(self.run_key(spec, dataset), spec.name)}

    def run_key(self, spec: ModelSpec, dataset: NerDataset) -> str:
        """A case's run key in this run (its spec as it runs: quick schedule and overrides applied)."""
        from .runner import effective_spec, key_for

        return key_for(effective_spec(spec, self.options), dataset, self.options)

    def reusable(self, key: str, case: str) -> RunRecord | None:
        """The stored record a case of this run key is answered from instead of being trained (the newest finished
        one); None where it trains: none stored, or --rerun. The one place that decides reuse, for :meth:`run` and
        for the expected times alike."""
        return None if self.rerun else self.store.find(key, case)

    def run(self, spec: ModelSpec, dataset: NerDataset) -> Outcome:
        """Run one case (its spec seeded), or reuse its stored record; a failure is recorded before it is raised."""
        from .backends.base import ModelUnavailable
        from .cost import release_memory
        from .runner import effective_spec, floor_of, judge, key_for, new_record, run_case, work_dir

        run_spec = effective_spec(spec, self.options)
        key = key_for(run_spec, dataset, self.options)  # run_key's, from the spec worked out once
        # one process at a time per run key, wherever it runs on this results folder: a second one waits, then finds
        # the first one's record
        with self.case_lock(key, f"{spec.name} (seed {run_spec.train.seed})"):
            stored = self.reusable(key, spec.name)
            if stored is not None:  # judged against the floor the spec has now, not the one it had then
                stored.floor, stored.floor_note = floor_of(run_spec, dataset, self.options)
                stored.reused = True
                if self.options.save_models or self.options.profile_dir:
                    warnings.warn(f"{spec.name} (seed {run_spec.train.seed}) is reused from its record: nothing saved "
                                  "or profiled for it (--rerun trains it again)")
                self.records.append(judge(stored))
                return Outcome(stored, reused=True)
            if self.rerun:  # trained again from the start, not continued from a checkpoint of an earlier run
                shutil.rmtree(work_dir(run_spec, dataset, self.options), ignore_errors=True)
            failed: RunRecord | None = None
            label = f"{spec.name} (seed {run_spec.train.seed})"
            report = self.progress(label) if self.progress else None
            self.running = label  # what an interruption (Ctrl-C) stops: the plugin names it
            try:
                result = run_case(run_spec, dataset, self.options, report)
            except ModelUnavailable as err:
                self.running = None
                record = new_record(run_spec, dataset, self.options, "skipped", error=str(err))
                self.records.append(record)
                return Outcome(record, skipped=str(err))
            except Exception as err:  # the case fails with its reason; the next case runs on
                self.running = None
                failed = new_record(run_spec, dataset, self.options, "failed", error=error_reason(err))
                failed.cost["traceback"] = traceback.format_exc()[-4000:]
            if failed is not None:
                # raised outside the except block, so no frame of the failed case (nor the GPU memory its model
                # holds) stays referenced while the next case runs
                release_memory()
                self.store.write(failed)
                self.records.append(failed)
                raise CaseFailed(f"{failed.error}\n{failed.cost['traceback']}")
            self.store.write(result.record, result.predictions)
            # recorded: the case's checkpoints are not needed any more (a rerun starts afresh)
            shutil.rmtree(work_dir(run_spec, dataset, self.options), ignore_errors=True)
            self.running = None
            self.records.append(result.record)
            return Outcome(result.record)

    @contextlib.contextmanager
    def case_lock(self, key: str, label: str):
        """Held while a run key's case runs, by whichever process on this results folder runs it; a second one
        says that it waits."""
        (self.store.folder / ".locks").mkdir(exist_ok=True)
        lock = atomic.lock(self.store.folder / ".locks" / key)
        try:
            lock.acquire(timeout=5)
        except TimeoutError:  # filelock's Timeout is one
            print(f"nerbench: {label} is being run by another process on {self.store.folder}: waiting for its "
                  "record", flush=True)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def record_crash(self, nodeid: str, reason: str) -> RunRecord:
        """A case whose process died: a failed record with the reason (no run key: it is never reused). The case and
        seed are read from its test id (``test_ner[NAME]`` or ``test_ner[NAME-seedN]``)."""
        case_id = nodeid.rsplit("[", 1)[-1].rstrip("]") if "[" in nodeid else nodeid
        seeded = re.fullmatch(r"(.+)-seed(\d+)", case_id)
        case, seed = (seeded.group(1), int(seeded.group(2))) if seeded else (case_id, 0)
        record = RunRecord(case=case, status="failed", run_key="crashed-" + uuid.uuid4().hex[:8],
                           mode=self.options.mode, spec={}, spec_hash="", dataset={}, seed=seed,
                           error=f"worker crashed: {reason}", synthetic=self.options.synthetic,
                           label=self.options.label)
        self.store.write(record)
        self.records.append(record)
        return record

    def record_path(self, record: RunRecord) -> Path:
        return self.store.path_for(record)
