"""nerbench_core.stats: counts agree with seqeval, bootstrap intervals, paired and seed-level tests, wording."""
import json
import math
import random
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
from scipy import stats as sps
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities

from nerbench_core.stats import (
    Interval, Paired, SeedComparison, UnitCounts, bootstrap_interval, choose_unit, f1_from_counts, mean_std,
    paired_comparison, paired_from_counts, seed_comparison, unit_counts, verdict,
)

TYPES = ("PER", "LOC", "ORG", "MISC")

# Odd IOB on purpose: I- without B-, B-X followed by I-Y, entities at sentence ends, adjacent B-s, empty
# sentences and sentences without entities.
ODD_GOLD = [
    ["B-PER", "I-PER", "O", "B-LOC"],
    ["O", "O", "O"],
    [],
    ["B-ORG", "I-ORG", "I-ORG", "O", "B-MISC", "B-MISC"],
    ["I-PER", "I-PER", "O", "B-LOC", "I-LOC"],
    ["B-PER"],
    ["O", "B-LOC", "I-LOC", "I-LOC"],
]
ODD_PRED = [
    ["I-PER", "I-PER", "O", "B-LOC"],      # I- without B-: conlleval/seqeval default read PER(0,1), correct
    ["O", "B-MISC", "O"],                  # spurious entity in a sentence without gold entities
    [],
    ["B-ORG", "I-LOC", "I-ORG", "O", "B-MISC", "I-MISC"],  # B-X I-Y splits into three; MISC merged: 0 correct
    ["B-PER", "I-PER", "O", "B-LOC", "O"],  # gold I-PER I-PER is PER(0,1): correct; LOC shortened
    ["O"],                                 # dropped
    ["O", "B-ORG", "I-ORG", "I-ORG"],       # wrong type
]


def random_tags(rng: random.Random, n_sentences: int, max_len: int = 12) -> list[list[str]]:
    """Arbitrary tag soup, including every ill-formed IOB pattern."""
    tags = ["O"] * 6 + [f"{p}-{t}" for p in "BI" for t in TYPES]
    return [[rng.choice(tags) for _ in range(rng.randint(0, max_len))] for _ in range(n_sentences)]


def corrupt(gold: list[list[str]], rate: float, seed: int) -> list[list[str]]:
    """Predictions with a given per-token error rate (type changes, O<->entity, B<->I)."""
    rng = random.Random(seed)
    out = []
    for sent in gold:
        pred = list(sent)
        for i, tag in enumerate(pred):
            if rng.random() < rate:
                pred[i] = rng.choice(["O", f"B-{rng.choice(TYPES)}", f"I-{rng.choice(TYPES)}"])
        out.append(pred)
    return out


def synthetic_gold(n_sentences: int, seed: int) -> list[list[str]]:
    """Well-formed IOB2 sentences with 0-3 entities of 1-3 tokens."""
    rng = random.Random(seed)
    gold = []
    for _ in range(n_sentences):
        sent = []
        for _ in range(rng.randint(0, 3)):
            sent += ["O"] * rng.randint(1, 3)
            t = rng.choice(TYPES)
            sent += [f"B-{t}"] + [f"I-{t}"] * rng.randint(0, 2)
        sent += ["O"] * rng.randint(0, 3)
        gold.append(sent)
    return gold


def seqeval_scores(gold, pred):
    kw = {"zero_division": 0}
    return precision_score(gold, pred, **kw), recall_score(gold, pred, **kw), f1_score(gold, pred, **kw)


def check_against_seqeval(gold, pred, groups=None):
    c = unit_counts(gold, pred, groups)
    t = c.totals()
    # seqeval's own micro counts: entity sets over the whole (concatenated) data set
    ge, pe = set(get_entities(gold)), set(get_entities(pred))
    assert (t["tp"], t["n_pred"], t["n_gold"]) == (len(ge & pe), len(pe), len(ge))
    p, r, f = seqeval_scores(gold, pred)
    assert (t["tp"] / t["n_pred"] if t["n_pred"] else 0.0) == pytest.approx(p, abs=1e-12)
    assert (t["tp"] / t["n_gold"] if t["n_gold"] else 0.0) == pytest.approx(r, abs=1e-12)
    if t["n_pred"] + t["n_gold"]:
        assert c.f1 == pytest.approx(f, abs=1e-12)
    return c


# --------------------------------------------------------------------------------------------- counts

def test_counts_equal_seqeval_on_odd_iob():
    c = check_against_seqeval(ODD_GOLD, ODD_PRED)
    assert c.unit == "sentence" and c.n_units == len(ODD_GOLD)
    assert c.tp.tolist() == [2, 0, 0, 0, 1, 0, 0]
    assert c.n_pred.tolist() == [2, 1, 0, 4, 2, 0, 1]
    assert c.n_gold.tolist() == [2, 0, 0, 3, 2, 1, 1]


@pytest.mark.parametrize("seed", range(5))
def test_counts_equal_seqeval_on_random_tag_soup(seed):
    rng = random.Random(seed)
    gold = random_tags(rng, 150)
    pred = [[rng.choice(["O", "B-PER", "I-PER", "I-LOC", g]) for g in s] for s in gold]
    c = check_against_seqeval(gold, pred)
    groups = [i // 7 for i in range(len(gold))]
    d = check_against_seqeval(gold, pred, groups)
    assert d.unit == "document" and d.n_units == math.ceil(len(gold) / 7)
    assert d.totals() == c.totals()
    assert d.tp[0] == c.tp[:7].sum() and d.n_gold[-1] == c.n_gold[(d.n_units - 1) * 7:].sum()


def test_documents_are_units_in_order_of_first_appearance():
    gold = [["B-PER"], ["B-LOC"], ["O"], ["B-ORG", "B-ORG"]]
    c = unit_counts(gold, gold, ["d9", "d9", "d2", "d2"])
    assert c.n_gold.tolist() == [2, 2] and c.tp.tolist() == [2, 2]


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ in shape.*2 gold sentences, 1 predicted"):
        unit_counts([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 1 has 2 gold tags and 1 predicted"):
        unit_counts([["O"], ["B-PER", "O"]], [["O"], ["B-PER"]])
    with pytest.raises(ValueError, match="groups has 1 entries for 2 sentences"):
        unit_counts([["O"], ["O"]], [["O"], ["O"]], [0])


def test_undefined_f1_is_nan_not_zero():
    assert math.isnan(f1_from_counts(0, 0, 0))
    assert f1_from_counts(0, 3, 0) == 0.0 and f1_from_counts(0, 0, 3) == 0.0  # defined, and 0
    c = unit_counts([["O", "O"], []], [["O", "O"], []])
    assert math.isnan(c.f1)
    iv = bootstrap_interval(c, resamples=50)
    assert math.isnan(iv.estimate) and math.isnan(iv.low) and math.isnan(iv.high)


def test_f1_from_counts_is_vectorized():
    tp = np.array([[1, 0], [2, 0]])
    out = f1_from_counts(tp, np.array([[2, 0], [2, 1]]), np.array([[2, 0], [4, 0]]))
    assert out.shape == (2, 2)
    assert out[0, 0] == 0.5 and math.isnan(out[0, 1]) and out[1, 0] == pytest.approx(2 / 3) and out[1, 1] == 0.0


def test_counts_validate_themselves():
    with pytest.raises(ValueError, match="tp <= min"):
        UnitCounts([3], [2], [5])
    with pytest.raises(ValueError, match="differ in length"):
        UnitCounts([1, 1], [2], [5])


# ------------------------------------------------------------------------------------------ bootstrap

def test_interval_contains_estimate_and_narrows_with_more_data():
    gold = synthetic_gold(400, seed=1)
    pred = corrupt(gold, 0.1, seed=2)
    small = unit_counts(gold, pred)
    big = unit_counts(gold * 4, pred * 4)
    a = bootstrap_interval(small, resamples=1000)
    b = bootstrap_interval(big, resamples=1000)
    assert a.estimate == pytest.approx(f1_score(gold, pred)) and b.estimate == pytest.approx(a.estimate)
    assert a.low < a.estimate < a.high and b.low < b.estimate < b.high
    # width scales like 1/sqrt(n): 4x the data, about half the width
    assert (b.high - b.low) < 0.7 * (a.high - a.low)
    assert a.unit == "sentence" and a.n_units == 400 and a.resamples == 1000 and "percentile" in a.method


def test_interval_is_seeded():
    gold = synthetic_gold(300, seed=3)
    c = unit_counts(gold, corrupt(gold, 0.1, seed=4))
    assert bootstrap_interval(c, resamples=500, seed=7) == bootstrap_interval(c, resamples=500, seed=7)
    assert bootstrap_interval(c, resamples=500, seed=7) != bootstrap_interval(c, resamples=500, seed=8)


def test_interval_matches_scipy_percentile_bootstrap_roughly():
    """Cross-check against scipy.stats.bootstrap (paired resampling of the three count arrays)."""
    gold = synthetic_gold(500, seed=5)
    c = unit_counts(gold, corrupt(gold, 0.15, seed=6))
    ours = bootstrap_interval(c, resamples=4000, seed=0)

    def stat(tp, n_pred, n_gold, axis=-1):
        return f1_from_counts(tp.sum(axis=axis), n_pred.sum(axis=axis), n_gold.sum(axis=axis))

    ref = sps.bootstrap((c.tp, c.n_pred, c.n_gold), stat, paired=True, vectorized=True, n_resamples=4000,
                        method="percentile", rng=np.random.default_rng(1)).confidence_interval
    width = ours.high - ours.low
    assert abs(ours.low - ref.low) < 0.1 * width and abs(ours.high - ref.high) < 0.1 * width


# ------------------------------------------------------------------------------------------- choose_unit

def test_choose_unit_documents_when_enough():
    ids = [f"doc{i // 15}" for i in range(15 * 231)]
    unit, groups = choose_unit(ids)
    assert unit == "document" and len(groups) == len(ids) and groups[0] == 0 and max(groups) == 230


def test_choose_unit_sentences_when_few_or_no_documents():
    assert choose_unit([i // 10 for i in range(290)]) == ("sentence", None)  # 29 documents
    assert choose_unit([i // 10 for i in range(300)])[0] == "document"       # 30 documents
    assert choose_unit(None) == ("sentence", None)
    assert choose_unit([None] * 100) == ("sentence", None)
    assert choose_unit([0, None, 1]) == ("sentence", None)


# ------------------------------------------------------------------------------------ paired systems

def test_identical_predictions_give_zero_delta_and_p_one():
    gold = synthetic_gold(200, seed=8)
    pred = corrupt(gold, 0.1, seed=9)
    res = paired_comparison(gold, pred, pred, resamples=2000)
    assert res.delta == 0.0 and res.low == 0.0 and res.high == 0.0
    assert res.p_value == 1.0


def test_clearly_better_system_is_significant():
    gold = synthetic_gold(300, seed=10)
    good, bad = corrupt(gold, 0.03, seed=11), corrupt(gold, 0.15, seed=12)
    res = paired_comparison(gold, good, bad, resamples=5000)
    assert res.delta == pytest.approx(f1_score(gold, good) - f1_score(gold, bad))
    assert res.f1_a == pytest.approx(f1_score(gold, good)) and res.f1_b == pytest.approx(f1_score(gold, bad))
    assert res.delta > 0.05 and 0 < res.low < res.delta < res.high and res.p_value < 0.05
    assert "bootstrap" in res.method and "randomization" in res.method
    flipped = paired_comparison(gold, bad, good, resamples=5000)
    assert flipped.delta == pytest.approx(-res.delta) and flipped.high < 0 and flipped.p_value < 0.05


def test_close_systems_are_not_significant():
    gold = synthetic_gold(200, seed=13)
    a, b = corrupt(gold, 0.10, seed=14), corrupt(gold, 0.10, seed=15)
    res = paired_comparison(gold, a, b, resamples=5000)
    assert res.low < res.delta < res.high
    assert res.low < 0 < res.high and res.p_value > 0.05


def test_paired_uses_documents_and_is_seeded():
    gold = synthetic_gold(300, seed=16)
    a, b = corrupt(gold, 0.05, seed=17), corrupt(gold, 0.08, seed=18)
    groups = [i // 10 for i in range(300)]
    r1 = paired_comparison(gold, a, b, groups, resamples=3000, seed=3)
    assert r1.unit == "document" and r1.n_units == 30 and r1.resamples == 3000
    assert r1 == paired_comparison(gold, a, b, groups, resamples=3000, seed=3)
    assert r1 != paired_comparison(gold, a, b, groups, resamples=3000, seed=4)


def test_randomization_p_value_equals_exact_enumeration():
    """12 units: 2**12 = 4096 <= resamples, so scipy enumerates every swap; recompute that by hand."""
    gold = synthetic_gold(12, seed=19)
    for s in range(12):  # every unit has an entity
        gold[s] = ["B-PER", "I-PER", "O"] + gold[s]
    a, b = corrupt(gold, 0.05, seed=20), corrupt(gold, 0.3, seed=21)
    ca, cb = unit_counts(gold, a), unit_counts(gold, b)
    res = paired_from_counts(ca, cb, resamples=10000)
    G = ca.n_gold.sum()
    masks = ((np.arange(4096)[:, None] >> np.arange(12)) & 1).astype(bool)  # 1 = swap that unit
    tpa = np.where(masks, cb.tp, ca.tp).sum(1)
    tpb = np.where(masks, ca.tp, cb.tp).sum(1)
    pa = np.where(masks, cb.n_pred, ca.n_pred).sum(1)
    pb = np.where(masks, ca.n_pred, cb.n_pred).sum(1)
    null = 2 * tpa / (pa + G) - 2 * tpb / (pb + G)
    obs = res.delta
    eps = 1e-12
    expected = min(1.0, 2 * min(np.mean(null <= obs + eps), np.mean(null >= obs - eps)))
    assert res.p_value == pytest.approx(expected, abs=1e-12)


def test_paired_refuses_shape_mismatch_and_different_gold():
    gold = [["B-PER", "O"], ["O"]]
    with pytest.raises(ValueError, match="differ in shape"):
        paired_comparison(gold, [["B-PER", "O"], ["O"]], [["B-PER"], ["O"]])
    with pytest.raises(ValueError, match="differ in shape"):
        paired_comparison(gold, [["B-PER", "O"]], [["B-PER", "O"], ["O"]])
    with pytest.raises(ValueError, match="same units and gold"):
        paired_from_counts(unit_counts(gold, gold), unit_counts([["O", "O"], ["O"]], gold))


# ------------------------------------------------------------------------------------- across seeds

def test_mean_std():
    assert mean_std([0.9, 0.92, 0.94]) == (pytest.approx(0.92), pytest.approx(0.02), 3)
    assert mean_std([0.9]) == (0.9, None, 1)
    m, s, n = mean_std([])
    assert math.isnan(m) and s is None and n == 0


def test_seed_comparison_matches_hand_computed_welch():
    a, b = [0.912, 0.905, 0.918, 0.909], [0.899, 0.903, 0.894]
    res = seed_comparison(a, b)
    ma, mb = sum(a) / 4, sum(b) / 3
    va = sum((x - ma) ** 2 for x in a) / 3
    vb = sum((x - mb) ** 2 for x in b) / 2
    se = math.sqrt(va / 4 + vb / 3)
    t = (ma - mb) / se
    df = (va / 4 + vb / 3) ** 2 / ((va / 4) ** 2 / 3 + (vb / 3) ** 2 / 2)
    p = 2 * sps.t.sf(abs(t), df)
    q = sps.t.ppf(0.975, df)
    assert res.delta == pytest.approx(ma - mb, abs=1e-15)
    assert (res.mean_a, res.n_a, res.mean_b, res.n_b) == (pytest.approx(ma), 4, pytest.approx(mb), 3)
    assert res.std_a == pytest.approx(math.sqrt(va)) and res.std_b == pytest.approx(math.sqrt(vb))
    assert res.p_value == pytest.approx(p, rel=1e-9)
    assert res.low == pytest.approx(ma - mb - q * se, rel=1e-9)
    assert res.high == pytest.approx(ma - mb + q * se, rel=1e-9)
    assert "Welch" in res.method


def test_seed_comparison_needs_two_seeds_a_side():
    res = seed_comparison([0.91], [0.90, 0.905])
    assert res.p_value is None and res.low is None and res.high is None
    assert res.delta == pytest.approx(0.91 - 0.9025) and res.std_a is None and res.n_a == 1


# ------------------------------------------------------------------------------------------- wording

def _paired(delta, low, high, p):
    return Paired(delta, low, high, p, 10000, "document", 231, "paired bootstrap + randomization")


def test_verdict_significant_and_not():
    assert verdict("A", "B", _paired(0.012, 0.006, 0.018, 0.002)) == (
        "A beats B by +1.20 F1 (95% CI +0.60 to +1.80, p = 0.002, paired test over 231 documents)")
    assert verdict("A", "B", _paired(-0.002, -0.009, 0.005, 0.61)) == (
        "no significant difference between A and B: ΔF1 -0.20 (95% CI -0.90 to +0.50, p = 0.61, "
        "paired test over 231 documents)")
    # B better: named first, difference and CI in its favour
    assert verdict("A", "B", _paired(-0.012, -0.018, -0.006, 0.0001)).startswith(
        "B beats A by +1.20 F1 (95% CI +0.60 to +1.80, p < 0.001")


def test_verdict_uses_the_seed_test_when_there_are_seeds():
    paired = _paired(0.012, 0.006, 0.018, 0.002)  # one run: looks significant
    noisy = seed_comparison([0.92, 0.90, 0.91], [0.905, 0.91, 0.895])  # across seeds: it is not
    text = verdict("A", "B", paired, noisy)
    assert text.startswith("no significant difference between A and B: ΔF1 +")
    assert "3 seeds each" in text and "single-run paired test: ΔF1 +1.20" in text
    clear = seed_comparison([0.921, 0.922, 0.920], [0.909, 0.910, 0.908])
    text = verdict("A", "B", paired, clear)
    assert text.startswith("A beats B by +1.20 F1 (95% CI +") and "3 seeds each" in text
    one_seed = seed_comparison([0.92], [0.90])
    assert "too few for a seed-level test" in verdict("A", "B", paired, one_seed)
    assert verdict("A", "B", paired, one_seed).startswith("A beats B by +1.20 F1")


def test_results_are_frozen_and_json_friendly():
    gold = synthetic_gold(60, seed=26)
    c = unit_counts(gold, corrupt(gold, 0.1, seed=27))
    results = [bootstrap_interval(c, resamples=100), paired_comparison(gold, gold, corrupt(gold, 0.1, 28),
               resamples=200), seed_comparison([0.9, 0.91], [0.89, 0.9]), seed_comparison([0.9], [0.8])]
    for r in results:
        d = asdict(r)
        assert all(type(v) in (float, int, str, type(None)) for v in d.values()), d
        json.loads(json.dumps(d))
        with pytest.raises(AttributeError):
            r.method = "x"
    assert isinstance(results[0], Interval) and isinstance(results[2], SeedComparison)


def test_stats_imports_no_heavy_or_test_modules():
    code = ("import sys, nerbench_core.stats; "
            "bad = [m for m in ('torch', 'transformers', 'pytest') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
