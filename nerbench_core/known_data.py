"""Which data set a run's data is (bench/datasets.toml), for floors: a leaf that data and specs both read."""
from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path

DATASETS = Path(__file__).resolve().parent.parent / "bench" / "datasets.toml"


@dataclass(frozen=True)
class DataIdentity:
    """A data set as floors name it: its name in bench/datasets.toml where it is a known one, and its fingerprint."""

    name: str
    fingerprint: str

    def matches(self, data: str) -> bool:
        """A floor's ``data``: a known data set's name, or a fingerprint."""
        return data in (self.name, self.fingerprint) and bool(data)


@functools.cache
def known_datasets(path: Path = DATASETS) -> dict[str, dict]:
    return tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def identify(full_fingerprint: str, sizes: dict[str, int] | None, types: tuple[str, ...]) -> DataIdentity:
    """The known data set with this fingerprint; else one with these exact split sizes and entity types (the same
    data read another way, e.g. from the hub); else an unnamed one."""
    for name, entry in known_datasets().items():
        if full_fingerprint in entry.get("fingerprints", []):
            return DataIdentity(name, full_fingerprint)
    for name, entry in known_datasets().items():
        if sizes and entry.get("sentences") == sizes and tuple(sorted(entry.get("types", []))) == types:
            return DataIdentity(name, full_fingerprint)
    return DataIdentity("", full_fingerprint)
