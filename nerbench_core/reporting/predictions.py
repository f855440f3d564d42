"""Saved predictions: a case's words with their gold and predicted tags, in CoNLL columns.

One line per word, ``word gold predicted`` separated by spaces (conlleval's input), a blank line after each sentence
and a ``-DOCSTART- O O`` line where a document begins: the words, both tag sequences and the documents, so a file can
be re-scored, compared with another case's on the same data (paired tests resample documents) and read for errors
without retraining. A name ending in ``.gz`` is written and read gzip-compressed.

Predicted tags alone (``*.tags.gz``, a sentence a line): what a baselines file keeps beside it, so that a project
holds no copy of the data its baselines were measured on; the words, gold tags and documents are the data's own,
joined back when the file is read (store.saved_predictions).
"""
from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

from .. import atomic

DOCSTART = "-DOCSTART-"


@dataclass(frozen=True)
class SplitPredictions:
    words: list[list[str]]
    gold: list[list[str]]
    pred: list[list[str]]
    docs: list[int]  # each sentence's document

    def __post_init__(self) -> None:
        n = len(self.words)
        if not (len(self.gold) == len(self.pred) == len(self.docs) == n) or any(
                len(w) != len(g) or len(w) != len(p) for w, g, p in zip(self.words, self.gold, self.pred)):
            raise ValueError("predictions: words, gold and predicted tags differ in shape")


def to_text(preds: SplitPredictions) -> str:
    out = io.StringIO()
    last_doc = None
    for words, gold, pred, doc in zip(preds.words, preds.gold, preds.pred, preds.docs):
        if doc != last_doc:
            out.write(f"{DOCSTART} O O\n\n")
            last_doc = doc
        for w, g, p in zip(words, gold, pred):
            out.write(f"{w} {g} {p}\n")
        out.write("\n")
    return out.getvalue()


def write_predictions(path: Path, preds: SplitPredictions) -> Path:
    text = to_text(preds)
    if path.name.endswith(".gz"):
        return atomic.write_bytes(path, gzip.compress(text.encode("utf-8"), mtime=0))
    return atomic.write_text(path, text)


def read_predictions(path: str | Path) -> SplitPredictions:
    """A predictions file back; a malformed line raises ValueError naming the file and line."""
    path = Path(path)
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.name.endswith(".gz") else raw).decode("utf-8")
    words, gold, pred, docs = [], [], [], []
    sentence: list[tuple[str, str, str]] = []
    doc = -1

    def close() -> None:
        if sentence:
            words.append([w for w, _, _ in sentence])
            gold.append([g for _, g, _ in sentence])
            pred.append([p for _, _, p in sentence])
            docs.append(max(doc, 0))
            sentence.clear()

    for lineno, line in enumerate(text.splitlines(), start=1):
        cols = line.split()
        if not cols:
            close()
        elif cols[0] == DOCSTART:
            close()
            doc += 1
        elif len(cols) != 3:
            raise ValueError(f"{path}:{lineno}: expected 'word gold predicted', found {line!r}")
        else:
            sentence.append((cols[0], cols[1], cols[2]))
    close()
    return SplitPredictions(words, gold, pred, docs)


TAGS_SUFFIX = ".tags.gz"


def write_tags(path: Path, preds: SplitPredictions) -> Path:
    """The predicted tags alone, a sentence a line, gzip-compressed (``path`` ends in ``.tags.gz``)."""
    text = "".join(" ".join(tags) + "\n" for tags in preds.pred)
    return atomic.write_bytes(path, gzip.compress(text.encode("utf-8"), mtime=0))


def read_tags(path: str | Path, words: list[list[str]], gold: list[list[str]], docs: list[int]) -> SplitPredictions:
    """A tags file joined with the words, gold tags and documents of the split it was predicted on; a file that does
    not fit that split raises ValueError naming the file (and the line)."""
    lines = gzip.decompress(Path(path).read_bytes()).decode("utf-8").splitlines()
    if len(lines) != len(words):
        raise ValueError(f"{path}: {len(lines)} sentences, the data's split has {len(words)}")
    pred = [line.split() for line in lines]
    for lineno, (tags, sentence) in enumerate(zip(pred, words), start=1):
        if len(tags) != len(sentence):
            raise ValueError(f"{path}:{lineno}: {len(tags)} tags for a sentence of {len(sentence)} words")
    return SplitPredictions(words, gold, pred, docs)
