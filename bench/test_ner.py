"""The benchmark: one parametrized case per model spec (and seed) of the chosen suite (--suite, --seeds)."""
import pytest

from nerbench_core.plugin import UNAVAILABLE


def test_ner(spec, ner_dataset, nerbench, record_property):
    outcome = nerbench.run(spec, ner_dataset)
    record = outcome.record
    if outcome.skipped:
        pytest.skip(UNAVAILABLE + outcome.skipped)
    where = nerbench.record_path(record)
    for name, value in (("f1", record.f1), ("train_seconds", record.cost.get("train_seconds")),
                        ("train_tokens_per_second", record.cost.get("train_tokens_per_second"))):
        record_property(name, None if value is None else float(value))  # JUnit XML properties, for CI dashboards
    if record.synthetic:  # random weights: the cost is the result, F1 means nothing
        assert record.cost.get("train_tokens_per_second", 0) > 0, f"no training throughput measured ({where})"
        return
    # pytest.fail, not assert: the message alone, without pytest's dump of the record's repr
    if record.floor is not None and (record.f1 is None or record.f1 < record.floor):
        f1 = "undefined" if record.f1 is None else f"{100 * record.f1:.2f}"
        pytest.fail(f"{spec.name}: test F1 {f1} is below its floor {100 * record.floor:.2f} on "
                    f"{record.dataset.get('name') or record.dataset.get('fingerprint')} (by "
                    f"{100 * (record.floor - (record.f1 or 0)):.2f} points; {record.mode} run, seed {record.seed}; "
                    f"{record.floor_note}; record: {where})", pytrace=False)
    if nerbench.baselines is not None:
        regression = nerbench.baselines.regression(record)
        if regression is not None:
            pytest.fail(regression, pytrace=False)
