"""Entity-level error analysis of saved predictions: what kind of mistake each wrong entity is. No torch.

Entities are read from the IOB2 tags by seqeval's ``get_entities`` in its default mode, the reading the headline
scores use (``scoring.score``), sentence by sentence (an entity never crosses a sentence). Each gold entity and each
predicted entity then falls in exactly one class, in the usual scheme of entity-level error analyses (Ratinov & Roth
2009; Chinchor & Sundheim's MUC categories, as in ``nervaluate``):

``correct``              a prediction with the same span and the same type as a gold entity
``wrong_type``           same span, another type
``wrong_boundary``       overlapping spans (not the same), same type
``wrong_boundary_type``  overlapping spans (not the same), another type
``missed``               a gold entity left without a prediction of its own
``spurious``             a prediction left without a gold entity of its own

The rules, exactly. Gold and predicted entities are paired one to one, in three rounds, each round only among the
entities still unpaired:

1. same span, same type: ``correct``;
2. same span, another type: ``wrong_type``;
3. overlapping spans (at least one word in common): candidate pairs are taken greedily, best first: the same type
   before another type, then the larger overlap (in words), then the leftmost gold entity, then the leftmost
   prediction. A pair of the same type is ``wrong_boundary``, of different types ``wrong_boundary_type``.

What is left unpaired is ``missed`` (gold) or ``spurious`` (predicted). So every entity is counted once, and

    gold entities      = correct + wrong_type + wrong_boundary + wrong_boundary_type + missed
    predicted entities = correct + wrong_type + wrong_boundary + wrong_boundary_type + spurious

A prediction overlapping two gold entities (``[New York]LOC [City]LOC`` read as one ``[New York City]LOC``) is one
boundary error, paired with the gold entity it overlaps most (the same type preferred; on a tie the leftmost), and
the other gold entity is ``missed``: the model produced no entity for it. Likewise two predictions inside one gold
entity: one boundary error, and the other prediction is ``spurious``. Each leftover still records, in
:attr:`Outcome.overlaps`, how many entities of the other side it overlapped, so "missed outright" (0) and "merged
into a neighbour's prediction" (>0) can be told apart.

The entity-type confusion matrix counts the same pairs: gold type (row) x predicted type (column), with a ``none``
row for spurious predictions and a ``none`` column for missed gold entities. Its rows add up to the gold entities of
each type, its columns to the predicted entities of each type, and the diagonal of the types counts the correct and
the wrong-boundary (same type) pairs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from seqeval.metrics.sequence_labeling import get_entities

CLASSES = ("correct", "wrong_type", "wrong_boundary", "wrong_boundary_type", "missed", "spurious")
ERRORS = CLASSES[1:]
CLASS_NAMES = {"correct": "correct", "wrong_type": "wrong type", "wrong_boundary": "wrong boundary",
               "wrong_boundary_type": "wrong boundary and type", "missed": "missed", "spurious": "spurious"}
NONE = "none"  # the confusion matrix's row (spurious) and column (missed) for "no entity on this side"
_TYPE_ORDER = ("PER", "LOC", "ORG", "MISC")


@dataclass(frozen=True, order=True)
class Entity:
    """One entity: its sentence, its words ``start`` to ``end`` (``end`` excluded) and its type."""

    sentence: int
    start: int
    end: int
    type: str

    def overlap(self, other: "Entity") -> int:
        """Words in common with ``other`` (0 in another sentence)."""
        if self.sentence != other.sentence:
            return 0
        return max(0, min(self.end, other.end) - max(self.start, other.start))

    def same_span(self, other: "Entity") -> bool:
        return (self.sentence, self.start, self.end) == (other.sentence, other.start, other.end)


@dataclass(frozen=True)
class Outcome:
    """One classified pair or leftover: ``gold`` is None for spurious, ``pred`` is None for missed."""

    kind: str  # one of CLASSES
    gold: Entity | None
    pred: Entity | None
    overlaps: int = 0  # missed/spurious only: entities of the other side it overlapped (all paired elsewhere)

    @property
    def type(self) -> str:
        """The entity type the outcome is filed under: the gold type, or the predicted one for spurious."""
        return self.gold.type if self.gold is not None else self.pred.type


@dataclass
class ErrorAnalysis:
    """Counts per class (all six, zeros included), per class and type, the confusion matrix and every outcome."""

    counts: dict[str, int]
    by_type: dict[str, dict[str, int]]  # type -> class -> count (gold type; predicted type for spurious)
    confusion: dict[str, dict[str, int]]  # gold type or "none" -> predicted type or "none" -> count (non-zero only)
    types: list[str]  # the entity types seen, gold or predicted, in a stable order
    n_gold: int
    n_pred: int
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(self.counts[k] for k in ERRORS)

    def matrix(self) -> tuple[list[str], list[str], list[list[int]]]:
        """The confusion matrix as a table: row labels (gold types + none), column labels (predicted types + none)
        and the counts, row by row (the none x none cell is always 0)."""
        labels = [*self.types, NONE]
        return labels, labels, [[self.confusion.get(g, {}).get(p, 0) for p in labels] for g in labels]

    def to_dict(self, outcomes: bool = False) -> dict:
        """JSON-friendly: counts, per type, the confusion matrix; each outcome too when ``outcomes``."""
        d = {"counts": dict(self.counts), "by_type": {t: dict(c) for t, c in self.by_type.items()},
             "confusion": {g: dict(c) for g, c in self.confusion.items()}, "types": list(self.types),
             "n_gold": self.n_gold, "n_pred": self.n_pred}
        if outcomes:
            d["outcomes"] = [asdict(o) for o in self.outcomes]
        return d


def entities(tags: Sequence[str], sentence: int = 0) -> list[Entity]:
    """The entities of one sentence's tags, read as the scores read them (seqeval, default mode)."""
    return [Entity(sentence, start, end + 1, kind) for kind, start, end in get_entities(list(tags))]


def _sentences(tags) -> list[list[str]]:
    tags = list(tags)
    return [list(tags)] if tags and all(isinstance(t, str) for t in tags) else [list(s) for s in tags]


def _type_key(t: str) -> tuple:
    return (_TYPE_ORDER.index(t) if t in _TYPE_ORDER else len(_TYPE_ORDER), t)


def classify(gold, pred) -> ErrorAnalysis:
    """Classify the entities of ``pred`` against ``gold``: tag sequences, one per sentence (or one flat sentence).

    The rules are the module's (:mod:`nerbench_core.reporting.errors`); they pair entities one to one."""
    gold_s, pred_s = _sentences(gold), _sentences(pred)
    if len(gold_s) != len(pred_s) or any(len(g) != len(p) for g, p in zip(gold_s, pred_s)):
        raise ValueError("gold and predicted tag sequences differ in shape")
    outcomes: list[Outcome] = []
    for i, (g_tags, p_tags) in enumerate(zip(gold_s, pred_s)):
        outcomes.extend(_classify_sentence(entities(g_tags, i), entities(p_tags, i)))
    return _summarise(outcomes)


def classify_predictions(preds) -> ErrorAnalysis:
    """:func:`classify` on saved predictions (a ``predictions.SplitPredictions``)."""
    return classify(preds.gold, preds.pred)


def _classify_sentence(gold: list[Entity], pred: list[Entity]) -> list[Outcome]:
    out: list[Outcome] = []
    free_g, free_p = set(range(len(gold))), set(range(len(pred)))

    def pair(kind: str, gi: int, pi: int) -> None:
        out.append(Outcome(kind, gold[gi], pred[pi]))
        free_g.discard(gi)
        free_p.discard(pi)

    # rounds 1 and 2: the same span (spans are unique on each side: seqeval's entities never overlap)
    for same_type in (True, False):
        for gi in sorted(free_g):
            for pi in sorted(free_p):
                if gold[gi].same_span(pred[pi]) and (gold[gi].type == pred[pi].type) == same_type:
                    pair("correct" if same_type else "wrong_type", gi, pi)
                    break
    # round 3: overlapping spans, best candidate pair first
    candidates = sorted(
        ((gold[gi].type != pred[pi].type, -gold[gi].overlap(pred[pi]), gold[gi].start, pred[pi].start, gi, pi)
         for gi in free_g for pi in free_p if gold[gi].overlap(pred[pi]) > 0))
    for other_type, _, _, _, gi, pi in candidates:
        if gi in free_g and pi in free_p:
            pair("wrong_boundary_type" if other_type else "wrong_boundary", gi, pi)
    for gi in sorted(free_g):
        out.append(Outcome("missed", gold[gi], None, overlaps=sum(gold[gi].overlap(p) > 0 for p in pred)))
    for pi in sorted(free_p):
        out.append(Outcome("spurious", None, pred[pi], overlaps=sum(pred[pi].overlap(g) > 0 for g in gold)))
    return sorted(out, key=lambda o: (o.gold or o.pred).start)


def _summarise(outcomes: list[Outcome]) -> ErrorAnalysis:
    counts = {k: 0 for k in CLASSES}
    by_type: dict[str, dict[str, int]] = {}
    confusion: dict[str, dict[str, int]] = {}
    types: set[str] = set()
    for o in outcomes:
        counts[o.kind] += 1
        by_type.setdefault(o.type, {k: 0 for k in CLASSES})[o.kind] += 1
        g = o.gold.type if o.gold is not None else NONE
        p = o.pred.type if o.pred is not None else NONE
        confusion.setdefault(g, {}).setdefault(p, 0)
        confusion[g][p] += 1
        types.update(t for t in (g, p) if t != NONE)
    ordered = sorted(types, key=_type_key)
    n_gold = sum(o.gold is not None for o in outcomes)
    n_pred = sum(o.pred is not None for o in outcomes)
    return ErrorAnalysis(counts, {t: by_type[t] for t in sorted(by_type, key=_type_key)},
                         {g: confusion[g] for g in sorted(confusion, key=lambda t: (t == NONE, _type_key(t)))},
                         ordered, n_gold, n_pred, outcomes)
