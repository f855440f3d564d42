"""The benchmark: one parametrized case per model spec of the chosen suite (--suite)."""
import pytest


def test_ner(spec, ner_dataset, nerbench):
    outcome = nerbench.run(spec, ner_dataset)
    record = outcome.record
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    where = nerbench.record_path(record)
    if record.synthetic:  # random weights: the cost is the result, F1 means nothing
        assert record.cost.get("train_tokens_per_second", 0) > 0, f"no training throughput measured ({where})"
        return
    f1, floor = record.f1, record.floor
    assert f1 >= floor, (f"{spec.name}: test F1 {100 * f1:.2f} is below its floor {100 * floor:.2f} "
                         f"({record.mode} run; floor source: {spec.floor.source or 'unstated'}; record: {where})")
    if nerbench.baselines is not None:
        regression = nerbench.baselines.regression(record)
        assert regression is None, regression
