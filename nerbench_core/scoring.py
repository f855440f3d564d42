"""Word-level tag sequences to entity metrics, by seqeval, with a bootstrap interval of F1.

Headline: micro P/R/F1 in seqeval's default mode, which gives exactly conlleval's counts and scores
(tests/test_conlleval_equality.py). Strict IOB2 mode is reported beside it (an entity must start with B- to count),
and P/R/F1/support per entity type. F1 on a split without gold entities is undefined: None, never 0.

The interval: a 95% percentile bootstrap of micro F1 over documents (or sentences where a split has fewer than 30
documents), 1,000 resamples, seeded (stats.bootstrap_interval and stats.choose_unit say why documents).
"""
from __future__ import annotations

from dataclasses import asdict

from seqeval.metrics import classification_report, f1_score
from seqeval.scheme import IOB2

from . import stats

RESAMPLES = 1000


def _report(gold, pred, **mode) -> dict:
    return classification_report(gold, pred, output_dict=True, zero_division=0, **mode)


def _check_shape(gold, pred) -> None:
    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("gold and predicted tag sequences differ in shape")


def f1(gold: list[list[str]], pred: list[list[str]]) -> float | None:
    """Micro F1 alone, as :func:`score` gives it (seqeval's default mode; None without gold entities): what choosing an
    epoch needs, after each one. classification_report extracts the entities again for each average it gives, so this
    takes about an eighth of score's time."""
    _check_shape(gold, pred)
    if not any(tag != "O" for sentence in gold for tag in sentence):  # in the default mode any tag but O begins or
        return None  # continues an entity
    return f1_score(gold, pred, zero_division=0)


def score(gold: list[list[str]], pred: list[list[str]], docs: list[int] | None = None,
          interval: bool = True) -> dict:
    """Metrics of ``pred`` against ``gold`` (one tag per word, per sentence); ``docs``: each sentence's document,
    for the interval's resampling unit; ``interval`` false: no bootstrap (the kept epoch's dev metrics)."""
    _check_shape(gold, pred)
    default = _report(gold, pred)
    strict = _report(gold, pred, mode="strict", scheme=IOB2)
    micro, smicro = default["micro avg"], strict["micro avg"]
    support = int(micro["support"])
    aggregate = {"micro avg", "macro avg", "weighted avg"}
    metrics = {
        "precision": micro["precision"],
        "recall": micro["recall"] if support else None,
        "f1": micro["f1-score"] if support else None,
        "strict_precision": smicro["precision"],
        "strict_recall": smicro["recall"] if support else None,
        "strict_f1": smicro["f1-score"] if support else None,
        "support": support,
        "per_type": {
            t: {"precision": m["precision"], "recall": m["recall"], "f1": m["f1-score"], "support": int(m["support"])}
            for t, m in sorted(default.items()) if t not in aggregate
        },
    }
    if interval and support:
        unit, groups = stats.choose_unit(docs)
        ci = stats.bootstrap_interval(stats.unit_counts(gold, pred, groups), resamples=RESAMPLES, seed=0)
        metrics["ci"] = {k: v for k, v in asdict(ci).items() if k != "estimate"}
    return metrics
