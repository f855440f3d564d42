"""Word-level tag sequences to entity metrics, by seqeval.

Headline: micro P/R/F1 in seqeval's default mode, which matches the conlleval script. Strict IOB2 mode
is reported beside it (an entity must start with B- to count), and P/R/F1/support per entity type.
"""
from __future__ import annotations

from seqeval.metrics import classification_report
from seqeval.scheme import IOB2


def _report(gold, pred, **mode) -> dict:
    return classification_report(gold, pred, output_dict=True, zero_division=0, **mode)


def score(gold: list[list[str]], pred: list[list[str]]) -> dict:
    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("gold and predicted tag sequences differ in shape")
    default = _report(gold, pred)
    strict = _report(gold, pred, mode="strict", scheme=IOB2)
    micro, smicro = default["micro avg"], strict["micro avg"]
    aggregate = {"micro avg", "macro avg", "weighted avg"}
    return {
        "precision": micro["precision"],
        "recall": micro["recall"],
        "f1": micro["f1-score"],
        "strict_precision": smicro["precision"],
        "strict_recall": smicro["recall"],
        "strict_f1": smicro["f1-score"],
        "support": int(micro["support"]),
        "per_type": {
            t: {"precision": m["precision"], "recall": m["recall"], "f1": m["f1-score"], "support": int(m["support"])}
            for t, m in sorted(default.items()) if t not in aggregate
        },
    }
