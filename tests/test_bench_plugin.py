"""End to end through pytest itself (pytester): the bench test, the plugin, the store and the table."""
import json
import shutil
from pathlib import Path

import pytest

from .helpers import make_conll_dir, tiny_bert

ROOT = Path(__file__).resolve().parent.parent
TRAIN = '{ learning_rate = 5e-3, epochs = 2, batch_size = 8, max_length = 32, warmup_ratio = 0.0 }'


@pytest.fixture
def bench(pytester, tmp_path, monkeypatch):
    """A pytester folder holding the real bench test and plugin, tiny data and a tiny local BERT."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("NERBENCH_DATA_DIR", "NERBENCH_SUITE"):
        monkeypatch.delenv(var, raising=False)
    shutil.copy(ROOT / "bench" / "test_ner.py", pytester.path / "test_ner.py")
    pytester.makeconftest('pytest_plugins = ["nerbench_core.plugin"]')
    data = make_conll_dir(tmp_path / "data", sizes=(96, 24, 24))
    model = tiny_bert(tmp_path / "tiny-bert")
    return pytester, data, model


def suite(pytester, body):
    return pytester.makefile(".toml", suite=body)


def fingerprint(data) -> str:
    """What a floor names the tiny data by (it is no data set of bench/datasets.toml)."""
    from nerbench_core.data import load_conll_dir

    return load_conll_dir(data).fingerprint


def tiny_bert_suite(pytester, model, floor=""):
    return suite(pytester, f'[[model]]\nname = "tiny-bert"\nmodel = "{model}"\ntrain = {TRAIN}\n{floor}')


def run(pytester, data, suite_file, *args):
    return pytester.runpytest_subprocess("test_ner.py", "--data-dir", str(data), "--suite", str(suite_file),
                                         "--results-dir", "results", "--cache-dir", "cache", "-p", "no:cacheprovider", "-ra",
                                         *args, timeout=600)


def test_a_tiny_bert_trains_writes_its_record_and_shows_in_the_table(bench):
    pytester, data, model = bench
    s = tiny_bert_suite(pytester, model, f'floor = {{ data = "{fingerprint(data)}", f1 = 0.0, quick = 0.0, '
                                         'source = "test" }\n')
    result = run(pytester, data, s, "--quick")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["nerbench tiny-bert (seed 42): training, 24 steps over 2 epochs",
                                 "nerbench tiny-bert (seed 42): step 12/24 (50%), epoch 1.00, loss *, * tok/s, ETA *",
                                 "nerbench tiny-bert (seed 42): dev F1 * at epoch 1 (best so far: epoch 1)",
                                 "*nerbench results*", "data: *, quick", "*| tiny-bert *| full *| * [*, *] *passed*"])
    (path,) = (pytester.path / "results").glob("tiny-bert-quick-*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "passed" and record["mode"] == "quick"
    test = record["metrics"]["test"]
    assert {"precision", "recall", "f1", "strict_f1", "per_type"} <= set(test)
    assert set(test["per_type"]) == {"PER", "LOC", "ORG"}
    assert len(record["metrics"]["dev_history"]) == 2 and record["metrics"]["best_epoch"] in (1.0, 2.0)
    assert record["cost"]["train_tokens_per_second"] > 0 and record["cost"]["peak_rss_gib"] > 0
    assert record["model"]["params_total"] == record["model"]["params_trainable"] > 0
    assert record["environment"]["versions"]["transformers"] and "machine" in record["environment"]
    assert record["dataset"]["sample"].startswith("quick:") and record["spec_hash"]

    # the same command again reuses the record; --rerun trains again
    again = run(pytester, data, s, "--quick")
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines(["*| tiny-bert *passed (reused)*"])
    run(pytester, data, s, "--quick", "--rerun").stdout.no_fnmatch_line("*(reused)*")


def test_floor_failure_message_names_f1_floor_and_record(bench):
    pytester, data, model = bench
    s = tiny_bert_suite(pytester, model, f'floor = {{ data = "{fingerprint(data)}", f1 = 0.99, quick = 0.99, '
                                         'source = "out of reach on purpose" }\n')
    result = run(pytester, data, s, "--quick", "--set", "max_steps=1")  # one step: far from the floor
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test F1 * is below its floor 99.00*by *points*out of reach on purpose*"
                                 "record: *results*.json*", "*| tiny-bert *failed: * < floor 99.00*"])


def test_unavailable_and_broken_cases_do_not_stop_the_others(bench, tmp_path):
    pytester, data, model = bench
    broken = tmp_path / "broken-model"  # a folder transformers cannot make a model of: an error, not unavailable
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    # a hub model, offline and not cached: cannot be had here
    s = suite(pytester, f'[[model]]\nname = "missing"\nmodel = "nobody/no-such-model"\n\n'
                        f'[[model]]\nname = "broken"\nmodel = "{broken}"\n\n'
                        f'[[model]]\nname = "fine"\nmodel = "{model}"\ntrain = {TRAIN}\n')
    result = run(pytester, data, s, "--quick")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*cases that could not run here*", "*test_ner?missing?: missing: cannot load*",
                                 "*the run fails because of them; --skip-unavailable skips such cases*",
                                 "*| broken *failed: ValueError: *", "*| missing *skipped: missing: cannot load*",
                                 "*SKIPPED*missing: cannot load*"])
    record = json.loads(next((pytester.path / "results").glob("broken-*.json")).read_text())
    assert record["status"] == "failed" and record["error"].startswith("ValueError")
    # a case that cannot run here fails the run (CI must not go green), unless asked to skip such cases
    only_missing = suite(pytester, '[[model]]\nname = "missing"\nmodel = "nobody/no-such-model"\n')
    assert run(pytester, data, only_missing, "--quick").ret == 1
    assert run(pytester, data, only_missing, "--quick", "--skip-unavailable").ret == 0
    # a local folder that is not there is a mistake in the suite, not a model this machine lacks: said at the start
    typo = suite(pytester, f'[[model]]\nname = "typo"\nmodel = "{model}-not-here"\n')
    result = run(pytester, data, typo, "--quick", "--skip-unavailable")
    assert result.ret == 4 and f"model '{model}-not-here': no such folder" in result.stderr.str()


def test_xdist_workers_report_to_one_table(bench):
    pytester, data, model = bench
    s = suite(pytester, "".join(f'[[model]]\nname = "tiny-{i}"\nmodel = "{model}"\ntrain = {TRAIN}\n\n'
                                for i in range(2)).replace("epochs = 2", "epochs = 1"))
    result = run(pytester, data, s, "--quick", "-n", "2", "--set", "max_tokens_per_batch=96")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*nerbench results*"])
    assert "| tiny-0" in result.stdout.str() and "| tiny-1" in result.stdout.str()
    # the workers' progress reaches the controller's terminal
    for case in ("tiny-0", "tiny-1"):
        for line in ("loading *", "model ready in *", "training, * steps over 1 epoch", "dev F1 * at epoch 1 *"):
            result.stdout.fnmatch_lines([f"nerbench {case} (seed 42): {line}"])


def test_compare_fails_a_case_that_fell_below_its_baseline(bench):
    pytester, data, model = bench
    s = tiny_bert_suite(pytester, model)
    run(pytester, data, s, "--quick", "--save-baselines", "base.json").assert_outcomes(passed=1)
    base = json.loads((pytester.path / "base.json").read_text())
    (stored,) = base["quick"]["tiny-bert"]  # one seed
    stored["metrics"]["test"]["f1"] += 0.05  # pretend the baseline was 5 points better
    (pytester.path / "base.json").write_text(json.dumps(base))
    result = run(pytester, data, s, "--quick", "--rerun", "--compare", "base.json", "--compare-fail", "2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*below the regression bound*1 stored seed: fixed tolerance 2.00 points*",
                                 "*| tiny-bert *| -5.00*"])
    # a baselines file that is not one stops the run before anything trains, naming the file
    (pytester.path / "bad.json").write_text("[1, 2]")
    bad = run(pytester, data, s, "--quick", "--compare", "bad.json")
    assert bad.ret == 4 and "bad.json: expected a JSON object" in bad.stderr.str()


def test_shards_split_a_suite_and_the_largest_cases_come_first(bench):
    pytester, data, model = bench
    # no records: architectures give the expected times, qwen1.5-7b > qwen1.5-0.5b > bert-base-cased
    s = suite(pytester, "".join(f'[[model]]\nname = "{n}"\nmodel = "m"\narchitecture = "{n}"\n\n'
                                for n in ("bert-base-cased", "qwen1.5-7b", "qwen1.5-0.5b")))
    order = run(pytester, data, s, "--collect-only", "-q")
    order.stdout.fnmatch_lines(["*test_ner*qwen1.5-7b*", "*test_ner*qwen1.5-0.5b*", "*test_ner*bert-base-cased*"])
    # the longest-first split of their expected time: the 7B alone against the two small ones
    first, second = (run(pytester, data, s, "--collect-only", "-q", "--shard", f"{i}/2").stdout.str() for i in (1, 2))
    assert "qwen1.5-7b" in first and "bert-base-cased" not in first and "qwen1.5-0.5b" not in first
    assert "qwen1.5-0.5b" in second and "bert-base-cased" in second and "qwen1.5-7b" not in second
    run(pytester, data, s, "--collect-only", "--shard", "3/2").stderr.fnmatch_lines(["*--shard '3/2': expected I/N*"])


def test_a_crashed_worker_leaves_a_failed_record_and_the_others_finish(bench):
    pytester, data, model = bench
    # a conftest that kills the worker process in the middle of the "crash" case, as an OOM kill would
    pytester.makeconftest('pytest_plugins = ["nerbench_core.plugin"]\nimport os, pytest\n\n'
                          '@pytest.fixture(autouse=True)\ndef die(request):\n'
                          '    if "crash" in request.node.name:\n        os._exit(9)\n')
    s = suite(pytester, "".join(f'[[model]]\nname = "{n}"\nmodel = "{model}"\ntrain = {TRAIN}\n\n'
                                for n in ("crash", "fine")).replace("epochs = 2", "epochs = 1"))
    result = run(pytester, data, s, "--quick", "-n", "2")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*| crash *failed: worker crashed*"])
    (crashed,) = (pytester.path / "results").glob("crash-*.json")
    assert json.loads(crashed.read_text())["error"].startswith("worker crashed")
