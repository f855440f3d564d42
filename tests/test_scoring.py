import pytest

from nerbench_core.scoring import f1, score


def test_known_predictions_give_known_scores():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O"]]  # 2 of 3 entities found, no false positives
    m = score(gold, pred)
    assert m["precision"] == 1.0
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(0.8)
    assert m["support"] == 3
    assert m["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_type"]["PER"]["f1"] == 1.0


def test_default_and_strict_modes_differ_on_ill_formed_spans():
    gold = [["B-PER", "I-PER", "O"]]
    pred = [["I-PER", "I-PER", "O"]]  # starts with I-: conlleval accepts it as an entity, strict IOB2 does not
    m = score(gold, pred)
    assert m["f1"] == 1.0
    assert m["strict_f1"] == 0.0


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        score([["O", "B-PER"]], [["O"]])


def test_f1_alone_is_scores_f1_and_undefined_without_gold_entities():
    """The dev selection's F1 after each epoch (scoring.f1) is score's headline, ill-formed spans included."""
    import random

    rng = random.Random(0)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
    for _ in range(20):
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(30)]
        pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in sentence] for sentence in gold]
        assert f1(gold, pred) == score(gold, pred, interval=False)["f1"]
    assert f1([["O", "O"]], [["B-PER", "O"]]) is None is score([["O", "O"]], [["B-PER", "O"]])["f1"]
    with pytest.raises(ValueError, match="differ in shape"):
        f1([["O", "B-PER"]], [["O"]])
