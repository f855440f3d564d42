"""The results folder: one JSON record per case and run key, its saved predictions beside it.

Records are written atomically (temporary file + rename) under a file lock, so concurrent pytest-xdist workers or
hosts sharing a folder lose nothing and a process killed mid-write leaves no partial record. A JSON file that is not
a record is passed over with one warning naming it.
"""
from __future__ import annotations

import functools
import json
import time
import warnings
from pathlib import Path
from typing import Iterable

from .. import atomic
from .predictions import TAGS_SUFFIX, SplitPredictions, read_predictions, read_tags, write_predictions
from .records import RecordError, RunRecord


class NerbenchWarning(UserWarning):
    pass


_warned: set[str] = set()


def _skip(path: Path, why: str) -> None:
    if str(path) not in _warned:  # once per file and process: the store is read once per case
        _warned.add(str(path))
        warnings.warn(f"{path}: skipped, not a record this nerbench can read ({why})", NerbenchWarning, stacklevel=3)


def read_record(path: Path) -> RunRecord | None:
    try:
        record = RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecordError) as err:
        _skip(path, f"{type(err).__name__}: {err}")
        return None
    record.folder = str(path.parent)
    return record


class ResultStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock = atomic.lock(self.folder / ".store")

    def path_for(self, record: RunRecord) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in record.case)
        return self.folder / f"{safe}-{record.mode}-{record.run_key}.json"

    def write(self, record: RunRecord, predictions: dict[str, SplitPredictions] | None = None) -> Path:
        """The record, and first the predictions it names (``split -> predictions``), each file atomically."""
        target = self.path_for(record)
        with self.lock:
            if target.exists() and read_record(target) is None:  # unreadable here (newer schema?): keep it aside
                target.replace(target.with_name(f"{target.name}.unreadable-{int(time.time())}"))
            for split, preds in (predictions or {}).items():
                name = target.with_suffix(f".{split}.conll").name
                write_predictions(self.folder / name, preds)
                record.predictions[split] = name
            atomic.write_json(target, record.to_dict())
        record.folder = str(self.folder)  # where its predictions are, for the tables' paired tests
        return target

    def records(self) -> list[RunRecord]:
        return [r for p in sorted(self.folder.glob("*.json")) if (r := read_record(p)) is not None]

    def find(self, key: str, case: str | None = None) -> RunRecord | None:
        """The newest finished record for a run key (an error or a skip is run again). Only the files named for the
        key are read (path_for): a results folder of thousands of records is not read once per case."""
        found = [r for p in sorted(self.folder.glob(f"*-{key}.json")) if (r := read_record(p)) is not None]
        hits = [r for r in found if r.run_key == key and (case is None or r.case == case) and r.finished]
        return max(hits, key=lambda r: r.created) if hits else None


def load_records(paths: Iterable[str | Path]) -> list[RunRecord]:
    """Records from folders, record files and baselines files (e.g. result folders of several hosts), the newest per
    case and run key. Each record remembers the folder it came from (``folder``), for its predictions files."""
    from .baselines import Baselines

    found: dict[tuple, RunRecord] = {}
    for p in map(Path, paths):
        loaded = ([r for f in sorted(p.glob("*.json")) if (r := read_record(f)) is not None] if p.is_dir()
                  else Baselines.records_in(p))
        for r in loaded:
            k = (r.case, r.run_key)
            if k not in found or r.created > found[k].created:
                found[k] = r
    return list(found.values())


def predictions_path(record: RunRecord, split: str) -> Path | None:
    """Where a loaded record's saved predictions for ``split`` are, if it has them."""
    name = record.predictions.get(split)
    return Path(record.folder) / name if name and record.folder else None


def saved_predictions(record: RunRecord, split: str, data_dirs: Iterable[str | Path] = ()) -> SplitPredictions | None:
    """A loaded record's saved predictions for ``split``, or None where it has none. Predicted tags alone (a
    baselines file's) are joined with the words, gold tags and documents of the data they were predicted on: found
    in ``data_dirs`` or the record's own data folder, as the record's fingerprint says (None where it is in none)."""
    path = predictions_path(record, split)
    if path is None or not path.is_file():
        return None
    if not path.name.endswith(TAGS_SUFFIX):
        return read_predictions(path)
    sentences = split_of(record, split, data_dirs)
    if sentences is None:
        return None
    return read_tags(path, [list(s.words) for s in sentences], [list(s.tags) for s in sentences],
                     [s.doc for s in sentences])


def split_of(record: RunRecord, split: str, data_dirs: Iterable[str | Path] = ()):
    """The sentences of ``split`` of the data a record ran on (its quick sample drawn again), from the first of
    ``data_dirs`` and the record's data folder whose files have the record's fingerprint; None where none has."""
    from ..data import SampleSize, sample

    want = record.dataset.get("full_fingerprint") or record.dataset.get("fingerprint")
    source = record.dataset.get("source") or ""
    candidates = [*data_dirs, *([source] if source and not source.startswith("hub:") else [])]
    for folder in candidates:
        dataset = _conll_dir(str(folder))
        if dataset is None or dataset.fingerprint != want:
            continue
        size = SampleSize.described(record.dataset.get("sample", ""))
        return (sample(dataset, size) if size else dataset)[split]
    return None


@functools.lru_cache(maxsize=4)
def _conll_dir(folder: str):
    """A CoNLL folder, read once a process (the baselines' rows of one report share it); None where unreadable."""
    from ..data import load_conll_dir

    try:
        return load_conll_dir(folder) if Path(folder).is_dir() else None
    except (OSError, ValueError):  # ConllFormatError is a ValueError
        return None
