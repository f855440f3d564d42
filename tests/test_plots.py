"""Entity error classes (reporting.errors) and the figures of a results table (reporting.plots)."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from seqeval.metrics.sequence_labeling import get_entities

from nerbench_core.reporting.errors import CLASSES, NONE, Entity, classify, classify_predictions, entities
from nerbench_core.reporting.predictions import SplitPredictions
from nerbench_core.reporting.records import RunRecord
from nerbench_core.reporting.store import ResultStore, load_records
from nerbench_core.reporting.table import fold

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
ALL_FIGURES = ["f1_vs_train_time.png", "f1_vs_peak_memory.png", "f1_vs_params.png", "f1_per_type.png",
               "errors_test.png", "loss_curves.png", "dev_f1_curves.png"]


def only(analysis, **expected):
    """The analysis counts exactly ``expected`` (every other class 0)."""
    assert analysis.counts == {k: expected.get(k, 0) for k in CLASSES}


# ---------------------------------------------------------------- errors: one class at a time


def test_correct_same_span_same_type():
    a = classify([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]])
    only(a, correct=1)
    assert a.outcomes[0].gold == a.outcomes[0].pred == Entity(0, 0, 2, "PER")
    assert a.confusion == {"PER": {"PER": 1}}


def test_wrong_type_same_span_other_type():
    a = classify([["O", "B-PER", "I-PER"]], [["O", "B-ORG", "I-ORG"]])
    only(a, wrong_type=1)
    assert a.confusion == {"PER": {"ORG": 1}}


def test_wrong_boundary_overlap_same_type():
    a = classify([["B-LOC", "I-LOC", "I-LOC"]], [["B-LOC", "I-LOC", "O"]])
    only(a, wrong_boundary=1)
    assert (a.outcomes[0].gold, a.outcomes[0].pred) == (Entity(0, 0, 3, "LOC"), Entity(0, 0, 2, "LOC"))
    assert a.confusion == {"LOC": {"LOC": 1}}  # a boundary error of the right type sits on the diagonal


def test_wrong_boundary_and_type_overlap_other_type():
    a = classify([["B-LOC", "I-LOC", "O"]], [["O", "B-ORG", "I-ORG"]])
    only(a, wrong_boundary_type=1)
    assert a.confusion == {"LOC": {"ORG": 1}}


def test_missed_gold_without_overlapping_prediction():
    a = classify([["B-PER", "O", "O"]], [["O", "O", "O"]])
    only(a, missed=1)
    assert a.outcomes[0].pred is None and a.outcomes[0].overlaps == 0
    assert a.confusion == {"PER": {NONE: 1}}


def test_spurious_prediction_without_overlapping_gold():
    a = classify([["O", "O"]], [["O", "B-MISC"]])
    only(a, spurious=1)
    assert a.outcomes[0].gold is None and a.outcomes[0].type == "MISC"
    assert a.confusion == {NONE: {"MISC": 1}}


def test_nothing_anywhere():
    a = classify([["O", "O"], []], [["O", "O"], []])
    only(a)
    assert (a.n_gold, a.n_pred, a.types, a.confusion) == (0, 0, [], {})


# ---------------------------------------------------------------- errors: the one-to-one rules


def test_one_prediction_over_two_gold_entities_is_one_boundary_error_and_one_miss():
    # [New]LOC [York]LOC predicted as one [New York]LOC: paired with the leftmost (equal overlap), the other missed
    a = classify([["B-LOC", "B-LOC"]], [["B-LOC", "I-LOC"]])
    only(a, wrong_boundary=1, missed=1)
    boundary = next(o for o in a.outcomes if o.kind == "wrong_boundary")
    missed = next(o for o in a.outcomes if o.kind == "missed")
    assert boundary.gold == Entity(0, 0, 1, "LOC") and missed.gold == Entity(0, 1, 2, "LOC")
    assert missed.overlaps == 1  # merged into a neighbour's prediction, not missed outright
    assert a.n_gold == 2 and a.n_pred == 1


def test_one_prediction_over_two_gold_entities_prefers_the_same_type():
    a = classify([["B-PER", "B-LOC"]], [["B-LOC", "I-LOC"]])
    only(a, wrong_boundary=1, missed=1)
    assert next(o for o in a.outcomes if o.kind == "missed").gold.type == "PER"
    assert a.confusion == {"PER": {NONE: 1}, "LOC": {"LOC": 1}}


def test_one_prediction_over_two_gold_entities_prefers_the_larger_overlap():
    a = classify([["B-LOC", "B-LOC", "I-LOC", "I-LOC"]], [["B-LOC", "I-LOC", "I-LOC", "O"]])
    only(a, wrong_boundary=1, missed=1)
    assert next(o for o in a.outcomes if o.kind == "wrong_boundary").gold == Entity(0, 1, 4, "LOC")


def test_two_predictions_inside_one_gold_entity_are_one_boundary_error_and_one_spurious():
    a = classify([["B-ORG", "I-ORG", "I-ORG"]], [["B-ORG", "I-ORG", "B-ORG"]])
    only(a, wrong_boundary=1, spurious=1)
    spurious = next(o for o in a.outcomes if o.kind == "spurious")
    assert spurious.pred == Entity(0, 2, 3, "ORG") and spurious.overlaps == 1


def test_same_span_pairs_come_before_overlaps():
    # the first prediction overlaps the second gold entity too, but that one is paired with its same-span prediction
    a = classify([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "I-PER", "B-ORG"]])
    only(a, wrong_boundary=1, wrong_type=1)


def test_entities_never_overlap_across_sentences():
    a = classify([["B-PER"], ["O"]], [["O"], ["B-PER"]])
    only(a, missed=1, spurious=1)


def test_entities_are_read_as_the_scores_read_them():
    # seqeval's default mode (conlleval's): an I- tag opens an entity, a type change closes one
    assert entities(["I-PER", "I-PER", "I-LOC", "O", "B-ORG"]) == [
        Entity(0, 0, 2, "PER"), Entity(0, 2, 3, "LOC"), Entity(0, 4, 5, "ORG")]
    only(classify([["I-PER", "I-PER"]], [["B-PER", "I-PER"]]), correct=1)


def test_a_flat_sequence_is_one_sentence():
    assert classify(["B-PER", "O"], ["B-PER", "O"]).counts["correct"] == 1


def test_shapes_must_agree():
    with pytest.raises(ValueError):
        classify([["O", "O"]], [["O"]])
    with pytest.raises(ValueError):
        classify([["O"], ["O"]], [["O"]])


def test_every_class_at_once_matrix_and_json():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG", "O", "B-MISC", "O", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG", "O", "B-ORG", "O", "O", "O", "B-LOC", "O"]]
    a = classify(gold, pred)
    only(a, correct=1, wrong_type=1, wrong_boundary=1, missed=1, spurious=1)
    b = classify([["B-LOC", "I-LOC", "O"]], [["O", "B-PER", "I-PER"]])
    only(b, wrong_boundary_type=1)
    assert a.errors == 4
    assert a.types == ["PER", "LOC", "ORG", "MISC"]
    rows, cols, counts = a.matrix()
    assert rows == cols == ["PER", "LOC", "ORG", "MISC", NONE]
    assert counts == [[1, 0, 0, 0, 0],
                      [0, 0, 1, 0, 0],
                      [0, 0, 1, 0, 0],
                      [0, 0, 0, 0, 1],
                      [0, 1, 0, 0, 0]]
    assert a.by_type["LOC"]["wrong_type"] == 1 and a.by_type["LOC"]["spurious"] == 1  # spurious: predicted type
    d = json.loads(json.dumps(a.to_dict(outcomes=True)))
    assert d["counts"] == a.counts and d["n_gold"] == 4 and d["n_pred"] == 4 and len(d["outcomes"]) == 5
    assert "outcomes" not in a.to_dict()


def test_from_saved_predictions():
    preds = SplitPredictions([["Ann", "met", "Bob"]], [["B-PER", "O", "B-PER"]], [["B-PER", "O", "B-ORG"]], [0])
    only(classify_predictions(preds), correct=1, wrong_type=1)


@pytest.mark.parametrize("seed", range(5))
def test_random_sequences_keep_every_entity_once_and_agree_with_seqeval(seed):
    rng = random.Random(seed)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    gold = [[rng.choice(tags) for _ in range(rng.randint(0, 25))] for _ in range(40)]
    pred = [[t if rng.random() < 0.6 else rng.choice(tags) for t in s] for s in gold]
    a = classify(gold, pred)
    n_gold = sum(len(get_entities(s)) for s in gold)
    n_pred = sum(len(get_entities(s)) for s in pred)
    paired = a.counts["correct"] + a.counts["wrong_type"] + a.counts["wrong_boundary"] + a.counts["wrong_boundary_type"]
    assert a.n_gold == n_gold == paired + a.counts["missed"]
    assert a.n_pred == n_pred == paired + a.counts["spurious"]
    true_positives = sum(len(set(get_entities(g)) & set(get_entities(p))) for g, p in zip(gold, pred))
    assert a.counts["correct"] == true_positives  # the scores' true positives
    rows, cols, counts = a.matrix()
    for i, t in enumerate(rows[:-1]):  # rows add up to the gold entities of a type, columns to the predicted ones
        assert sum(counts[i]) == sum(e[0] == t for s in gold for e in get_entities(s))
        assert sum(line[i] for line in counts) == sum(e[0] == t for s in pred for e in get_entities(s))
    for o in a.outcomes:  # missed/spurious only where nothing is left to pair with
        if o.kind in ("wrong_boundary", "wrong_boundary_type"):
            assert o.gold.overlap(o.pred) > 0 and not o.gold.same_span(o.pred)


# ---------------------------------------------------------------- plots


PREDS = SplitPredictions(
    words=[["Ann", "Lee", "visited", "New", "York"], ["Acme", "Corp", "hired", "Bob", "in", "May"]],
    gold=[["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["B-ORG", "I-ORG", "O", "B-PER", "O", "B-MISC"]],
    pred=[["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-LOC", "I-LOC", "O", "O", "B-PER", "O"]],
    docs=[0, 1])


def make_record(case, family, seed, f1, *, mode="quick", ci=None, gpu=None, history=True, error=None):
    metrics = {}
    if f1 is not None:
        test = {"f1": f1, "precision": f1, "recall": f1, "support": 100,
                "per_type": {"PER": {"f1": f1 + 0.05}, "LOC": {"f1": f1 - 0.1}, "ORG": {"f1": f1 - 0.2}}}
        if ci:
            test["ci"] = {"low": ci[0], "high": ci[1], "resamples": 1000, "unit": "document", "n_units": 2}
        metrics["test"] = test
    if history:
        metrics["dev_history"] = [{"epoch": e, "step": 10 * e, "dev_f1": f1 * e / 3, "seconds": 1.0} for e in (1, 2, 3)]
        metrics["loss_curve"] = [{"step": s, "epoch": s / 100, "loss": 2.0 / (1 + s / 10)} for s in range(1, 300, 5)]
    cost = {"train_seconds": 30.0 * (1 + seed / 100) if family == "encoder" else 600.0,
            "train_tokens_per_second": 1000.0}
    cost["peak_gpu_allocated_gib" if gpu else "peak_rss_gib"] = gpu or 1.5
    params = 22_000_000 if family == "encoder" else 360_000_000
    return RunRecord(case=case, status="failed" if error else "passed", run_key=f"{case}-{mode}-{seed}", mode=mode,
                     spec={"family": family, "method": "full"}, spec_hash="h",
                     dataset={"name": "toy", "fingerprint": "f", "sample": "quick:2/2/2"}, seed=seed,
                     metrics=metrics, cost=cost, error=error, config_key=f"{case}-{mode}",
                     model={"method": "full" if family == "encoder" else "lora", "paradigm": "head",
                            "params_total": params, "params_trainable": params // (1 if family == "encoder" else 50),
                            "backend": "hf"})


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 5000


@pytest.fixture(scope="module")
def plot_all():
    from nerbench_core.reporting.plots import plot_all
    return plot_all


@pytest.fixture
def rows(tmp_path):
    store = ResultStore(tmp_path / "results")
    store.write(make_record("enc", "encoder", 1, 0.80), predictions={"test": PREDS})
    store.write(make_record("enc", "encoder", 2, 0.84), predictions={"test": PREDS})
    store.write(make_record("dec", "decoder", 1, 0.70, ci=(0.65, 0.74), gpu=3.2), predictions={"test": PREDS})
    store.write(make_record("dec-nohistory", "decoder", 1, 0.60, ci=(0.5, 0.7), gpu=2.0, history=False))
    store.write(make_record("broken", "decoder", 1, None, error="CUDA out of memory", history=False))
    return fold(load_records([tmp_path / "results"]))


def test_plot_all_writes_every_figure_and_an_index_linking_them(rows, plot_all, tmp_path):
    index = plot_all(rows, tmp_path / "figures")
    assert index == tmp_path / "figures" / "index.md"
    text = index.read_text(encoding="utf-8")
    assert sorted(p.name for p in index.parent.glob("*.png")) == sorted(ALL_FIGURES)
    for name in ALL_FIGURES:
        assert is_png(index.parent / name), name
        assert f"]({name})" in text, name
    assert "Skipped" not in text
    assert "| model" in text and "enc" in text and "CUDA out of memory"[:10] in text  # the results table
    assert "toy quick:2/2/2, quick mode" in text  # which data
    # the error counts under the errors figure: PREDS has 1 correct, 1 wrong type, 1 wrong boundary, 2 missed,
    # 1 spurious
    only(classify_predictions(PREDS), correct=1, wrong_boundary=1, wrong_type=1, missed=2, spurious=1)
    assert "| enc | 1 | 1 | 1 | 1 | 0 | 2 | 1 |" in text


def test_figures_without_data_are_skipped_with_a_note(tmp_path, plot_all):
    store = ResultStore(tmp_path / "results")
    store.write(make_record("a", "encoder", 1, 0.8, history=False))  # no predictions file, no curves
    rows = fold(load_records([tmp_path / "results"]))
    index = plot_all(rows, tmp_path / "figures")
    text = index.read_text(encoding="utf-8")
    written = sorted(p.name for p in index.parent.glob("*.png"))
    assert written == sorted(["f1_vs_train_time.png", "f1_vs_peak_memory.png", "f1_vs_params.png", "f1_per_type.png"])
    for why in ("no row has a readable saved test predictions file", "no record has a loss curve",
                "no record has a dev-F1 history"):
        assert f"_Skipped: {why}" in text
    assert text.count("_Skipped:") == 3
    for name in written:
        assert is_png(index.parent / name)


def test_an_unreadable_predictions_file_falls_back_to_the_next_seed(rows, plot_all, tmp_path):
    from nerbench_core.reporting.store import predictions_path

    first = next(row for row in rows if row.first.case == "enc").first
    predictions_path(first, "test").write_text("not three columns here\n", encoding="utf-8")
    text = plot_all(rows, tmp_path / "figures").read_text(encoding="utf-8")
    assert "| enc | 2 |" in text and "| enc | 1 |" not in text


def test_rows_without_f1_and_no_rows_at_all(tmp_path, plot_all):
    store = ResultStore(tmp_path / "results")
    store.write(make_record("broken", "decoder", 1, None, error="boom", history=False))
    index = plot_all(fold(load_records([tmp_path / "results"])), tmp_path / "figures")
    assert not list(index.parent.glob("*.png"))
    assert "no row has a test F1" in index.read_text(encoding="utf-8")
    empty = plot_all([], tmp_path / "empty")
    assert "No results" in empty.read_text(encoding="utf-8") and not list(empty.parent.glob("*.png"))


def test_baselines_give_at_least_three_figures(tmp_path, plot_all):
    records = load_records([ROOT / "bench" / "baselines.json"])
    if not records:
        pytest.skip("bench/baselines.json holds no records")
    index = plot_all(fold(records), tmp_path / "figures")
    text = index.read_text(encoding="utf-8")
    pngs = sorted(index.parent.glob("*.png"))
    assert len(pngs) >= 3
    for p in pngs:
        assert is_png(p) and f"]({p.name})" in text


def test_plots_import_neither_torch_nor_pyplot():
    code = ("import sys, matplotlib\n"
            "import nerbench_core.reporting.plots, nerbench_core.reporting.errors\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n"
            "print(matplotlib.get_backend().lower())\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MPLBACKEND": "TkAgg"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "agg"
