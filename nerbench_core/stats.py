"""Statistics for comparing NER taggers: confidence intervals and significance tests for entity micro F1.

Scoring is seqeval's default (conlleval-compatible) mode: entities are read from each sentence's tags by
``seqeval.metrics.sequence_labeling.get_entities`` (the function seqeval's default ``f1_score`` uses) and
a predicted entity is correct when its (type, start, end) equals a gold entity's. Micro F1 is then
``2 tp / (n_pred + n_gold)`` summed over the whole test set, so every statistic here works on per-unit
counts ``(tp, n_pred, n_gold)``: resampling units and re-summing their counts re-scores the test set
exactly as seqeval would (``unit_counts`` is checked against seqeval in tests/test_stats.py).

Units are sentences, or documents when the split has document boundaries (see ``choose_unit``).

Methods (all vectorized over resamples, no Python loop per resample):

* ``bootstrap_interval``: percentile bootstrap over units (numpy indexing, seeded ``default_rng``).
  Percentile rather than BCa: BCa needs a jackknife over units and its acceleration estimate is unstable
  for a ratio statistic over few documents; with hundreds of units the two agree closely, and the
  percentile interval is simple to explain and reproduce.
* ``paired_comparison``: paired bootstrap of ΔF1 (the same resampled units for both systems) for the
  95% CI, and approximate randomization for the two-sided p-value: each unit's counts are swapped
  between A and B with probability 1/2 (``scipy.stats.permutation_test(permutation_type="samples")``;
  p = 2·min(one-sided p), with scipy's +1 correction, exact enumeration when 2**units <= resamples).
* ``seed_comparison``: Welch's t-test over per-seed F1, the only test here that sees training
  randomness (a per-run bootstrap only sees test-set sampling).

All F1 values are fractions in [0, 1]; ``verdict`` prints them in points (x100). F1 with no gold and no
predicted entities is undefined and returned as nan, never 0. Result dataclasses are frozen and
JSON-friendly: ``dataclasses.asdict`` gives float/int/str (nan allowed) and None only where documented.

Pure numpy/scipy/seqeval: no torch, transformers or pytest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np
from scipy import stats as _sps
from seqeval.metrics.sequence_labeling import get_entities

__all__ = [
    "UnitCounts", "Interval", "Paired", "SeedComparison",
    "unit_counts", "f1_from_counts", "bootstrap_interval", "choose_unit", "paired_comparison",
    "paired_from_counts", "seed_comparison", "mean_std", "verdict", "MIN_DOCUMENTS",
]

MIN_DOCUMENTS = 30
# Elements gathered per batch when resampling (bounds memory: about 8 bytes x this per gathered column).
_BATCH_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------------------------- counts

@dataclass(frozen=True, eq=False)
class UnitCounts:
    """Per-unit entity counts: ``tp[i]``, ``n_pred[i]``, ``n_gold[i]`` for resampling unit ``i``.

    ``unit`` is "sentence" or "document". Arrays are int64 and read-only. Not meant for JSON (use
    ``totals()``); summing the arrays gives seqeval's default-mode micro counts.
    """

    tp: np.ndarray
    n_pred: np.ndarray
    n_gold: np.ndarray
    unit: str = "sentence"

    def __post_init__(self) -> None:
        arrays = []
        for name in ("tp", "n_pred", "n_gold"):
            a = np.array(getattr(self, name), dtype=np.int64).reshape(-1)
            a.setflags(write=False)
            arrays.append(a)
            object.__setattr__(self, name, a)
        if not (arrays[0].shape == arrays[1].shape == arrays[2].shape):
            raise ValueError(f"tp, n_pred, n_gold differ in length: {[a.size for a in arrays]}")
        if np.any(arrays[0] > np.minimum(arrays[1], arrays[2])) or np.any(arrays[1] < 0) or np.any(arrays[2] < 0):
            raise ValueError("counts must satisfy 0 <= tp <= min(n_pred, n_gold)")

    @property
    def n_units(self) -> int:
        return int(self.tp.size)

    def totals(self) -> dict[str, int]:
        return {"tp": int(self.tp.sum()), "n_pred": int(self.n_pred.sum()), "n_gold": int(self.n_gold.sum())}

    @property
    def f1(self) -> float:
        t = self.totals()
        return float(f1_from_counts(t["tp"], t["n_pred"], t["n_gold"]))

    @property
    def precision(self) -> float:
        t = self.totals()
        return t["tp"] / t["n_pred"] if t["n_pred"] else math.nan

    @property
    def recall(self) -> float:
        t = self.totals()
        return t["tp"] / t["n_gold"] if t["n_gold"] else math.nan


def _check_shapes(gold: Sequence[Sequence[str]], *preds: Sequence[Sequence[str]]) -> None:
    for k, pred in enumerate(preds):
        name = "predictions" if len(preds) == 1 else f"predictions #{k + 1}"
        if len(pred) != len(gold):
            raise ValueError(f"gold and {name} differ in shape: {len(gold)} gold sentences, {len(pred)} predicted")
        for i, (g, p) in enumerate(zip(gold, pred)):
            if len(g) != len(p):
                raise ValueError(f"gold and {name} differ in shape: sentence {i} has {len(g)} gold tags "
                                 f"and {len(p)} predicted tags")


def _groups_index(groups: Sequence[Hashable] | None, n_sentences: int) -> tuple[np.ndarray | None, int]:
    """Map each sentence's group id to 0..k-1 in order of first appearance."""
    if groups is None:
        return None, n_sentences
    if len(groups) != n_sentences:
        raise ValueError(f"groups has {len(groups)} entries for {n_sentences} sentences")
    index: dict[Hashable, int] = {}
    inverse = np.fromiter((index.setdefault(g, len(index)) for g in groups), dtype=np.int64, count=n_sentences)
    return inverse, len(index)


def unit_counts(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                groups: Sequence[Hashable] | None = None) -> UnitCounts:
    """Per-unit (tp, n_pred, n_gold) with entities extracted exactly as seqeval's default mode does.

    Each sentence's entities come from ``seqeval...get_entities`` (conlleval rules: an ``I-X`` without
    ``B-X`` starts an entity, a type change ends one); an entity is correct when (type, start, end)
    match. With ``groups`` (one document id per sentence) sentences are summed per document, units in
    order of first appearance. Raises ValueError when gold and predictions differ in shape.
    """
    _check_shapes(gold, pred)
    n = len(gold)
    tp = np.zeros(n, dtype=np.int64)
    n_pred = np.zeros(n, dtype=np.int64)
    n_gold = np.zeros(n, dtype=np.int64)
    for i, (g, p) in enumerate(zip(gold, pred)):
        ge = set(get_entities(list(g)))
        pe = set(get_entities(list(p)))
        tp[i], n_pred[i], n_gold[i] = len(ge & pe), len(pe), len(ge)
    inverse, k = _groups_index(groups, n)
    if inverse is None:
        return UnitCounts(tp, n_pred, n_gold, "sentence")
    return UnitCounts(np.bincount(inverse, tp, k), np.bincount(inverse, n_pred, k),
                      np.bincount(inverse, n_gold, k), "document")


def f1_from_counts(tp, n_pred, n_gold):
    """Micro F1 = 2 tp / (n_pred + n_gold), elementwise (works over a leading resample axis).

    0/0 (no gold and no predicted entities) is nan (undefined), not 0. Scalars in, float out.
    """
    tp = np.asarray(tp, dtype=np.float64)
    denom = np.asarray(n_pred, dtype=np.float64) + np.asarray(n_gold, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(denom > 0, 2.0 * tp / np.where(denom > 0, denom, 1.0), np.nan)
    return float(f1) if f1.ndim == 0 else f1


# ------------------------------------------------------------------------------------------ bootstrap

def _bootstrap_sums(columns: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Sums of ``columns`` (units x k) over ``resamples`` bootstrap resamples of the units: (resamples, k).

    Vectorized numpy indexing, in batches of resamples to bound memory (no loop per resample).
    """
    n, k = columns.shape
    out = np.empty((resamples, k), dtype=np.int64)
    batch = max(1, min(resamples, _BATCH_ELEMENTS // max(n, 1)))
    cols = [np.ascontiguousarray(columns[:, j]) for j in range(k)]
    for start in range(0, resamples, batch):
        b = min(batch, resamples - start)
        idx = rng.integers(0, n, size=(b, n))
        for j in range(k):
            out[start:start + b, j] = cols[j][idx].sum(axis=1)
    return out


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    alpha = 1.0 - confidence
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class Interval:
    """Bootstrap confidence interval of micro F1 (fractions in [0, 1])."""

    low: float
    high: float
    resamples: int
    unit: str
    n_units: int
    method: str
    estimate: float = math.nan  # micro F1 of the full test set
    confidence: float = 0.95


def bootstrap_interval(counts: UnitCounts, resamples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> Interval:
    """Percentile bootstrap CI of micro F1, resampling ``counts``' units with replacement.

    Seeded (same seed, same interval). Resamples whose F1 is undefined (0/0) are dropped. 3,453
    sentences x 1,000 resamples takes a few tens of milliseconds.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    estimate = counts.f1
    if counts.n_units == 0:
        low = high = math.nan
    else:
        cols = np.stack([counts.tp, counts.n_pred, counts.n_gold], axis=1)
        sums = _bootstrap_sums(cols, resamples, np.random.default_rng(seed))
        low, high = _percentile_interval(f1_from_counts(sums[:, 0], sums[:, 1], sums[:, 2]), confidence)
    return Interval(low, high, int(resamples), counts.unit, counts.n_units,
                    f"percentile bootstrap over {counts.unit}s", float(estimate), float(confidence))


def choose_unit(doc_ids: Sequence[Hashable | None] | None,
                min_documents: int = MIN_DOCUMENTS) -> tuple[str, list[int] | None]:
    """Pick the resampling unit: ("document", groups) or ("sentence", None).

    Documents when every sentence has a document id (the split has ``-DOCSTART-`` boundaries) and
    there are at least ``min_documents`` (30) documents; sentences otherwise. Why: sentences of one
    news document share entities (a name recurs, often tagged the same way, right or wrong) and
    topic, so they are not independent; resampling sentences treats correlated errors as independent
    and understates the variance, giving intervals that are too narrow and p-values that are too
    small. Resampling whole documents keeps that correlation inside each unit. With fewer than ~30
    documents the bootstrap distribution over documents is too coarse to trust, so sentences are the
    lesser evil. ``groups`` maps each sentence to a document index 0..k-1 in order of first appearance.
    """
    if doc_ids is None or len(doc_ids) == 0 or any(d is None for d in doc_ids):
        return "sentence", None
    inverse, k = _groups_index(doc_ids, len(doc_ids))
    if k < min_documents:
        return "sentence", None
    return "document", [int(i) for i in inverse]


# ------------------------------------------------------------------------------------ paired systems

@dataclass(frozen=True)
class Paired:
    """Paired comparison of two systems on the same gold: delta = F1(a) - F1(b), fractions."""

    delta: float
    low: float
    high: float
    p_value: float
    resamples: int
    unit: str
    n_units: int
    method: str
    f1_a: float = math.nan
    f1_b: float = math.nan
    confidence: float = 0.95


def _randomization_p(a: UnitCounts, b: UnitCounts, resamples: int, rng: np.random.Generator) -> float:
    """Two-sided approximate-randomization p-value of ΔF1 (swap each unit's A/B counts with prob 1/2)."""
    n = a.n_units
    tp_cat = np.concatenate([a.tp, b.tp]).astype(np.float64)
    pred_cat = np.concatenate([a.n_pred, b.n_pred]).astype(np.float64)
    gold_total = float(a.n_gold.sum())  # identical for both systems, so invariant under swaps

    def delta_f1(x, y, axis=-1):
        x = np.asarray(x).astype(np.intp, copy=False)
        y = np.asarray(y).astype(np.intp, copy=False)
        fa = 2.0 * tp_cat[x].sum(axis=axis) / (pred_cat[x].sum(axis=axis) + gold_total)
        fb = 2.0 * tp_cat[y].sum(axis=axis) / (pred_cat[y].sum(axis=axis) + gold_total)
        return fa - fb

    batch = max(1, min(resamples, _BATCH_ELEMENTS // max(2 * n, 1)))
    res = _sps.permutation_test((np.arange(n), np.arange(n, 2 * n)), delta_f1, permutation_type="samples",
                                vectorized=True, n_resamples=resamples, batch=batch,
                                alternative="two-sided", rng=rng)
    return float(min(1.0, res.pvalue))


def paired_from_counts(a: UnitCounts, b: UnitCounts, resamples: int = 10000, seed: int = 0,
                       confidence: float = 0.95) -> Paired:
    """``paired_comparison`` on precomputed per-unit counts of two systems over the same units and gold."""
    if a.n_units != b.n_units or a.unit != b.unit or not np.array_equal(a.n_gold, b.n_gold):
        raise ValueError("the two systems' counts are not over the same units and gold entities")
    fa, fb = a.f1, b.f1
    method = (f"paired percentile bootstrap over {a.unit}s ({confidence:.0%} CI); two-sided approximate "
              f"randomization p-value (each {a.unit}'s counts swapped between systems with probability 1/2)")
    if a.n_units == 0 or a.n_gold.sum() == 0:
        return Paired(math.nan, math.nan, math.nan, math.nan, int(resamples), a.unit, a.n_units,
                      method + "; undefined: no gold entities", fa, fb, float(confidence))
    boot_rng, perm_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    cols = np.stack([a.tp, a.n_pred, b.tp, b.n_pred, a.n_gold], axis=1)
    s = _bootstrap_sums(cols, resamples, boot_rng)
    deltas = f1_from_counts(s[:, 0], s[:, 1], s[:, 4]) - f1_from_counts(s[:, 2], s[:, 3], s[:, 4])
    low, high = _percentile_interval(deltas, confidence)
    p = _randomization_p(a, b, resamples, perm_rng)
    return Paired(float(fa - fb), low, high, p, int(resamples), a.unit, a.n_units, method,
                  float(fa), float(fb), float(confidence))


def paired_comparison(gold: Sequence[Sequence[str]], pred_a: Sequence[Sequence[str]],
                      pred_b: Sequence[Sequence[str]], groups: Sequence[Hashable] | None = None,
                      resamples: int = 10000, seed: int = 0, confidence: float = 0.95) -> Paired:
    """ΔF1 = F1(a) - F1(b) on the same gold, with a paired bootstrap CI and a randomization p-value.

    CI: resample units with replacement, both systems together (same indices), percentile interval of
    ΔF1. p: approximate randomization, ``scipy.stats.permutation_test(permutation_type="samples")``
    swapping each unit's (tp, n_pred) between A and B with probability 1/2; two-sided. Units are
    sentences, or documents when ``groups`` gives each sentence's document id. Raises ValueError when
    the gold sequences differ in shape from either prediction.
    """
    _check_shapes(gold, pred_a, pred_b)
    return paired_from_counts(unit_counts(gold, pred_a, groups), unit_counts(gold, pred_b, groups),
                              resamples, seed, confidence)


# ------------------------------------------------------------------------------------- across seeds

def mean_std(values: Sequence[float]) -> tuple[float, float | None, int]:
    """(mean, sample standard deviation with ddof=1 or None when n < 2, n). Mean of nothing is nan."""
    v = np.asarray(list(values), dtype=np.float64)
    n = int(v.size)
    if n == 0:
        return math.nan, None, 0
    return float(v.mean()), (float(v.std(ddof=1)) if n >= 2 else None), n


@dataclass(frozen=True)
class SeedComparison:
    """Welch's t-test of per-seed F1 (fractions): delta = mean_a - mean_b. p/CI None with < 2 seeds a side."""

    mean_a: float
    std_a: float | None
    n_a: int
    mean_b: float
    std_b: float | None
    n_b: int
    delta: float
    low: float | None
    high: float | None
    p_value: float | None
    method: str


def seed_comparison(f1_a: Sequence[float], f1_b: Sequence[float], confidence: float = 0.95) -> SeedComparison:
    """Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``) of per-seed F1 of A vs B.

    The CI is scipy's ``confidence_interval()`` of the mean difference (Welch-Satterthwaite df). With
    fewer than 2 seeds on a side there is no variance estimate: p and the CI are None. When both sides
    have zero variance the t statistic is undefined and p/CI are nan.
    """
    ma, sa, na = mean_std(f1_a)
    mb, sb, nb = mean_std(f1_b)
    method = "Welch's t-test (unequal variances) over per-seed F1"
    if na < 2 or nb < 2:
        return SeedComparison(ma, sa, na, mb, sb, nb, ma - mb, None, None, None,
                              method + f"; not run: needs >= 2 seeds per system (got {na} and {nb})")
    res = _sps.ttest_ind(np.asarray(f1_a, float), np.asarray(f1_b, float), equal_var=False)
    ci = res.confidence_interval(confidence_level=confidence)
    return SeedComparison(ma, sa, na, mb, sb, nb, ma - mb, float(ci.low), float(ci.high), float(res.pvalue), method)


# ------------------------------------------------------------------------------------------- wording

def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def _p(p: float) -> str:
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def _seeds_phrase(n_a: int, n_b: int) -> str:
    return f"{n_a} seeds each" if n_a == n_b else f"{n_a} vs {n_b} seeds"


def verdict(name_a: str, name_b: str, paired: Paired | None, seeds: SeedComparison | None = None,
            alpha: float = 0.05) -> str:
    """One plain sentence comparing A and B, F1 in points (x100, 2 decimals).

    With seeds (n >= 2 on both sides) the seed-level Welch test decides, because it captures training
    randomness that a bootstrap of one run's test predictions cannot; the paired test is then quoted
    after it. Otherwise the paired test's p-value decides. Significant means p < alpha; the winner is
    named first and the difference and CI are given in its favour (positive).
    """
    seed_ok = seeds is not None and seeds.p_value is not None and seeds.n_a >= 2 and seeds.n_b >= 2
    if not seed_ok and paired is None:
        raise ValueError("verdict needs a paired comparison or a seed comparison with >= 2 seeds per side")
    if seed_ok:
        delta, low, high, p = seeds.delta, seeds.low, seeds.high, seeds.p_value
        extra = [_seeds_phrase(seeds.n_a, seeds.n_b), "Welch t-test over seeds"]
        if paired is not None and not math.isnan(paired.delta):
            extra.append(f"single-run paired test: ΔF1 {_pts(paired.delta)}, 95% CI {_pts(paired.low)} to "
                         f"{_pts(paired.high)}, {_p(paired.p_value)}")
    else:
        delta, low, high, p = paired.delta, paired.low, paired.high, paired.p_value
        extra = [f"paired test over {paired.n_units} {paired.unit}s"]
        if seeds is not None:
            extra.append(f"{_seeds_phrase(seeds.n_a, seeds.n_b)}, too few for a seed-level test")
    if any(v is None or math.isnan(v) for v in (delta, p)):
        return f"cannot compare {name_a} and {name_b}: F1 is undefined (no gold entities)"
    tail = "; ".join(extra)
    if p < alpha and delta != 0:
        win, lose, sign = (name_a, name_b, 1) if delta > 0 else (name_b, name_a, -1)
        lo, hi = sorted((sign * low, sign * high))
        return f"{win} beats {lose} by {_pts(sign * delta)} F1 (95% CI {_pts(lo)} to {_pts(hi)}, {_p(p)}, {tail})"
    return (f"no significant difference between {name_a} and {name_b}: ΔF1 {_pts(delta)} "
            f"(95% CI {_pts(low)} to {_pts(high)}, {_p(p)}, {tail})")
