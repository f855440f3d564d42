"""CoNLL-style NER data: reading, validation, IOB2 normalization, hub loading, the quick sample.

Everything that leaves this module is validated: a bad file raises :class:`ConllFormatError` naming the
file, the line and the problem, and nothing half-loaded goes on to training.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from . import atomic
from .known_data import DataIdentity, identify

SPLITS = ("train", "dev", "test")
# Hub split names differ from the file names.
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
DEFAULT_HUB_DATASET = "lhoestq/conll2003"  # script-free copy; the old `conll2003` script fails on datasets 4
DOCSTART = "-DOCSTART-"
_TAG = re.compile(r"^(O|[BI]-\S+)$")


class ConllFormatError(ValueError):
    """Bad input data; the message names the file and line (``path:line: what is wrong``)."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path, self.line, self.problem = str(path), line, message
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Sentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]
    doc: int = 0  # index of the document within its split (kept for document-context features)
    line: int = 0  # 1-based line of the first word in the source file (0 where there is no file)


@dataclass
class NerDataset:
    """Three validated splits with IOB2 tags, the label set of the training split and a fingerprint."""

    splits: dict[str, list[Sentence]]
    source: str
    labels: list[str] = field(default_factory=list)
    fingerprint: str = ""
    sample: str = "full"  # "full" or a description of the sample ("quick:1000/300/500@seed13")
    full_fingerprint: str = ""  # of the whole data set a sample was drawn from (the data a floor holds for)
    full_sizes: dict[str, int] = field(default_factory=dict)  # its split sizes (a sample's own are smaller)
    files: dict[str, str] = field(default_factory=dict)  # split -> the file it was read from, for messages

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = label_set(self.splits["train"])
        check_tags_known(self)
        if not self.fingerprint:
            self.fingerprint = fingerprint(self.splits)
        if not self.full_fingerprint:
            self.full_fingerprint = self.fingerprint
        if not self.full_sizes:
            self.full_sizes = self.sizes

    @property
    def identity(self) -> "DataIdentity":
        """Which data set this is (bench/datasets.toml), for floors: a quick sample is its full data set's."""
        return identify(self.full_fingerprint, self.full_sizes, self.entity_types)

    @property
    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}

    @property
    def entity_types(self) -> tuple[str, ...]:
        return tuple(sorted({t[2:] for t in self.labels if t != "O"}))

    def entities(self, split: str) -> int:
        return sum(t.startswith("B-") for s in self.splits[split] for t in s.tags)

    def documents(self, split: str) -> int:
        """Documents of a split (-DOCSTART- boundaries); 1 where the source has none (the hub's CoNLL-2003)."""
        return len({s.doc for s in self.splits[split]})

    def __getitem__(self, split: str) -> list[Sentence]:
        return self.splits[split]

    def stats(self) -> dict[str, dict[str, int]]:
        out = {}
        for name, sentences in self.splits.items():
            entities: dict[str, int] = {}
            for s in sentences:
                for t in s.tags:
                    if t.startswith("B-"):
                        entities[t[2:]] = entities.get(t[2:], 0) + 1
            out[name] = {
                "docs": len({s.doc for s in sentences}),
                "sentences": len(sentences),
                "tokens": sum(len(s.words) for s in sentences),
                **dict(sorted(entities.items())),
            }
        return out


# ---------------------------------------------------------------- tags


def iob2(tags: Sequence[str]) -> tuple[str, ...]:
    """Normalize IOB1 (or mixed) to IOB2: an ``I-X`` that does not continue an X entity begins one.

    Idempotent on IOB2 input, so files in either scheme can be read without being told which.
    """
    out: list[str] = []
    prev = "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        prev = tag
    return tuple(out)


def label_set(sentences: Iterable[Sentence]) -> list[str]:
    """Labels in a stable order: ``O``, then per entity type (sorted) ``B-`` before ``I-``."""
    tags = {t for s in sentences for t in s.tags}
    types = sorted({t[2:] for t in tags if t != "O"})
    ordered = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
    # I-X without any B-X cannot occur after iob2(); every B-X gets its I-X so the head can predict it
    return ordered


def check_tags_known(dataset: NerDataset) -> None:
    """Every entity type of dev and test occurs in train (a head cannot predict a type it never saw)."""
    known = {t[2:] for t in dataset.labels if t != "O"}
    for split in ("dev", "test"):
        for s in dataset.splits.get(split, []):
            for i, t in enumerate(s.tags):
                if t != "O" and t[2:] not in known:
                    line = s.line + i if s.line else None
                    where = dataset.files.get(split, f"{dataset.source} [{split}]")
                    written = _tag_as_written(where, line) or t
                    raise ConllFormatError(where, line, f"tag {written!r}: type {t[2:]!r} does not occur in the "
                                                        f"training split (types there: {', '.join(sorted(known))})")


def _tag_as_written(path: str, line: int | None) -> str | None:
    """The tag as the file has it (before IOB2 normalization), for messages."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()[line - 1].split()[-1] if line else None
    except (OSError, IndexError, UnicodeDecodeError):
        return None


# ---------------------------------------------------------------- files


def read_conll(path: str | Path) -> list[Sentence]:
    """Read one CoNLL column file: token first, NER tag last, blank line between sentences."""
    path = Path(path)
    if not path.is_file():
        raise ConllFormatError(path, None, "file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, as some editors write, is not part of the first word
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConllFormatError(path, line, f"not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None

    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    doc, start = 0, 0

    def close() -> None:
        if words:
            sentences.append(Sentence(tuple(words), iob2(tags), doc, start))
            words.clear()
            tags.clear()

    for lineno, line in enumerate(text.splitlines(), start=1):
        cols = line.split()
        if not cols:
            close()
            continue
        if cols[0] == DOCSTART:
            close()
            doc += 1 if sentences else 0
            continue
        if len(cols) < 2:
            raise ConllFormatError(path, lineno, f"expected at least 2 columns (token ... tag), found {len(cols)}: {line!r}")
        tag = cols[-1]
        if not _TAG.match(tag):
            raise ConllFormatError(path, lineno, f"tag {tag!r} is not O, B-TYPE or I-TYPE")
        if not words:
            start = lineno
        words.append(cols[0])
        tags.append(tag)
    close()
    if not sentences:
        raise ConllFormatError(path, None, "no sentences (empty split)")
    return sentences


def load_conll_dir(data_dir: str | Path) -> NerDataset:
    """``train.txt``, ``dev.txt`` and ``test.txt`` from one folder."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ConllFormatError(data_dir, None, "data folder not found (--data-dir / NERBENCH_DATA_DIR)")
    splits = {name: read_conll(data_dir / f"{name}.txt") for name in SPLITS}
    return NerDataset(splits, source=str(data_dir.resolve()),
                      files={name: str(data_dir / f"{name}.txt") for name in SPLITS})


def load_hub(name: str = DEFAULT_HUB_DATASET) -> NerDataset:
    """CoNLL-2003 (or a dataset with the same columns) through ``datasets``.

    Honours HF_HUB_OFFLINE / HF_DATASETS_OFFLINE and the usual cache: offline with a cached copy works.
    """
    import datasets  # heavy; only needed on this path

    loaded = datasets.load_dataset(name)
    splits: dict[str, list[Sentence]] = {}
    for ours, theirs in HUB_SPLITS.items():
        if theirs not in loaded:
            raise ConllFormatError(f"hub:{name}", None, f"split {theirs!r} missing (has {list(loaded)})")
        part = loaded[theirs]
        names = part.features["ner_tags"].feature.names
        sentences, doc = [], 0
        for row_no, row in enumerate(part):
            if row["tokens"][:1] == [DOCSTART]:
                doc += 1 if sentences else 0
                continue
            tags = [names[i] for i in row["ner_tags"]]
            for t in tags:
                if not _TAG.match(t):
                    raise ConllFormatError(f"hub:{name}[{theirs}]", row_no + 1, f"tag {t!r} is not O, B-X or I-X")
            sentences.append(Sentence(tuple(row["tokens"]), iob2(tags), doc, 0))
        if not sentences:
            raise ConllFormatError(f"hub:{name}[{theirs}]", None, "no sentences (empty split)")
        splits[ours] = sentences
    return NerDataset(splits, source=f"hub:{name}")


# ---------------------------------------------------------------- fingerprint, sample, cache


def fingerprint(splits: dict[str, list[Sentence]]) -> str:
    h = hashlib.sha256()
    for name in sorted(splits):
        h.update(name.encode())
        for s in splits[name]:
            h.update("\x1f".join(s.words).encode())
            h.update(b"\x1e")
            h.update("\x1f".join(s.tags).encode())
            h.update(b"\x1d")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class SampleSize:
    train: int = 1000
    dev: int = 300
    test: int = 500
    seed: int = 13

    def describe(self) -> str:
        return f"quick:{self.train}/{self.dev}/{self.test}@seed{self.seed}"

    @classmethod
    def described(cls, text: str) -> "SampleSize | None":
        """The size :meth:`describe` wrote (as records keep it), or None for anything else ("full")."""
        found = re.fullmatch(r"quick:(\d+)/(\d+)/(\d+)@seed(\d+)", text or "")
        return cls(*map(int, found.groups())) if found else None


def sample(dataset: NerDataset, size: SampleSize) -> NerDataset:
    """A fixed, seeded subset of each split: the same on every run and machine (document order kept)."""
    rng = random.Random(size.seed)  # Random(int) is specified to be stable across platforms and versions
    splits = {}
    for name in SPLITS:
        full = dataset.splits[name]
        k = min(getattr(size, name), len(full))
        splits[name] = [full[i] for i in sorted(rng.sample(range(len(full)), k))]
    return NerDataset(
        splits,
        source=dataset.source,
        labels=list(dataset.labels),  # the label set stays the full one: quick and full heads match
        fingerprint=hashlib.sha256(f"{dataset.fingerprint}:{size.describe()}".encode()).hexdigest()[:16],
        sample=size.describe(),
        full_fingerprint=dataset.fingerprint,
        full_sizes=dataset.sizes,
        files=dict(dataset.files),
    )


def to_json(dataset: NerDataset) -> dict:
    return {
        "source": dataset.source,
        "labels": dataset.labels,
        "fingerprint": dataset.fingerprint,
        "sample": dataset.sample,
        "files": dataset.files,
        "splits": {
            name: [[list(s.words), list(s.tags), s.doc, s.line] for s in sentences]
            for name, sentences in dataset.splits.items()
        },
    }


def from_json(obj: dict) -> NerDataset:
    if set(obj["splits"]) != set(SPLITS):
        raise ValueError(f"splits {sorted(obj['splits'])}, not {list(SPLITS)}")
    splits = {
        name: [Sentence(tuple(w), tuple(t), d, ln) for w, t, d, ln in rows] for name, rows in obj["splits"].items()
    }
    return NerDataset(splits, obj["source"], obj["labels"], obj["fingerprint"], obj["sample"], files=obj["files"])


def load_cached(data_dir: str | Path | None, cache_dir: str | Path, hub_name: str = DEFAULT_HUB_DATASET) -> NerDataset:
    """Load and validate once; later calls (and other pytest-xdist workers) read the processed copy.

    The cache key covers the source files' bytes, so an edited file is re-read. A file lock makes
    concurrent workers wait for the one that builds it instead of all parsing at once.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if data_dir is not None:
        data_dir = Path(data_dir)
        h = hashlib.sha256(str(data_dir.resolve()).encode())
        for name in SPLITS:
            p = data_dir / f"{name}.txt"
            h.update(p.read_bytes() if p.is_file() else b"<missing>")
        key = "dir-" + h.hexdigest()[:16]
    else:
        key = "hub-" + hashlib.sha256(hub_name.encode()).hexdigest()[:16]
    target = cache_dir / f"{key}.v2.json"
    with atomic.lock(target):
        if target.is_file():
            try:
                return from_json(json.loads(target.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
                warnings.warn(f"{target}: dataset cache unreadable ({type(err).__name__}: {err}); rebuilt")
        dataset = load_conll_dir(data_dir) if data_dir is not None else load_hub(hub_name)
        atomic.write_text(target, json.dumps(to_json(dataset)))
        return dataset
