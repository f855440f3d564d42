"""No lost work, no silent wrong numbers: bad input and faults as a hostile user would bring them (issue 17).

Each input problem stops the run before any training with one message naming the option or the file and line; a
run where a case could not run exits non-zero; nothing computed is lost.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .helpers import make_conll_dir, write_conll
from .test_bench_plugin import ROOT, TRAIN, bench, run, suite, tiny_bert_suite  # noqa: F401 (bench: fixture)


def usage_error(result, *fragments):
    """pytest's usage error (exit code 4): the message once, on stderr, no traceback."""
    err = result.stderr.str()
    assert result.ret == 4, (result.ret, err[-2000:])
    for fragment in fragments:
        assert err.count(fragment) == 1, (fragment, err[-2000:])
    assert "Traceback" not in err and "nerbench results" not in result.stdout.str()


def test_a_results_folder_that_cannot_be_written_stops_the_run_before_training(bench):
    pytester, data, model = bench
    (pytester.path / "a-file").write_text("not a folder")
    result = pytester.runpytest_subprocess("test_ner.py", "--data-dir", str(data), "--suite",
                                           str(tiny_bert_suite(pytester, model)), "--results-dir", "a-file/results",
                                           "-p", "no:cacheprovider")
    usage_error(result, "--results-dir a-file/results: cannot write there")


@pytest.mark.parametrize("line, message", [
    ("EU B_ORG\n", "train.txt:1: tag 'B_ORG' is not O, B-TYPE or I-TYPE"),
    ("EU\n", "train.txt:1: expected at least 2 columns"),
])
def test_a_bad_data_file_is_reported_once_with_file_and_line(bench, line, message):
    pytester, data, model = bench
    (data / "train.txt").write_text(line, encoding="utf-8")
    s = suite(pytester, "".join(f'[[model]]\nname = "m{i}"\nmodel = "{model}"\ntrain = {TRAIN}\n\n' for i in range(4)))
    usage_error(run(pytester, data, s, "--quick"), f"bad data: {data / 'train.txt'}:{message.split(':', 1)[1]}")


def test_no_data_anywhere_fails_the_run_unless_asked_to_skip(bench):
    pytester, data, model = bench
    s = tiny_bert_suite(pytester, model)
    args = ("test_ner.py", "--suite", str(s), "--results-dir", "results", "--cache-dir", "cache", "-p",
            "no:cacheprovider", "--hub-dataset", "nobody/no-such-dataset")
    usage_error(pytester.runpytest_subprocess(*args), "no data: the hub dataset cannot be had")
    skipped = pytester.runpytest_subprocess(*args, "--skip-unavailable")
    assert skipped.ret == 0 and "1 skipped" in skipped.stdout.str()


@pytest.mark.parametrize("body, message", [
    ('train = { epochs = 0 }', "epochs = 0.0: must be > 0"),
    ('train = { batch_size = 0 }', "batch_size = 0: must be >= 1"),
    ('train = { learning_rate = -1e-4 }', "learning_rate = -0.0001: must be > 0"),
    ('train = { optimizer = "adamw_tourch" }', "optimizer = 'adamw_tourch': not a Trainer optimizer"),
    ('quick = { epochs = "one" }', "quick.epochs: expected float, got 'one'"),
    ('quick = { batch_size = 0 }', "quick: batch_size = 0: must be >= 1"),
    ('floor = { data = "conll2003", f1 = 88 }', "floor f1 = 88.0: F1 floors are fractions in [0, 1]"),
])
def test_bad_spec_values_stop_the_run_before_any_model_loads(bench, body, message):
    pytester, data, model = bench
    s = suite(pytester, f'[[model]]\nname = "m"\nmodel = "{model}"\n{body}\n')
    usage_error(run(pytester, data, s, "--quick"), message)
    assert not (pytester.path / "results").exists() or not list((pytester.path / "results").glob("*.json"))


def test_a_model_table_instead_of_an_array_names_the_file(bench):
    pytester, data, model = bench
    s = suite(pytester, f'[model]\nname = "m"\nmodel = "{model}"\n')
    usage_error(run(pytester, data, s), "[model] is a single table; each model is an entry of the array [[model]]")


@pytest.mark.parametrize("name", ["", "../../x", "/abs", "a/b", "x y"])
def test_case_names_cannot_leave_their_folders(bench, name):
    pytester, data, model = bench
    s = suite(pytester, f'[[model]]\nname = "{name}"\nmodel = "{model}"\n')
    usage_error(run(pytester, data, s, "--save-models", "saved"), "name must be 1-100 letters, digits")


@pytest.mark.parametrize("args, message", [
    (("--seeds", "1,x"), "--seeds '1,x': expected a comma-separated list of integers"),
    (("--set", "epochs=-1"), "--set epochs: epochs = -1.0: must be > 0"),
    (("--epochs", "0"), "epochs = 0.0: must be > 0"),
    (("--gpus", "first"), "--gpus 'first': expected GPU indices"),
    (("--gpu-memory", "-2"), "--gpu-memory -2.0: expected a size in GB > 0"),
    (("--columns", "F1,nope"), "--columns: unknown column(s) nope"),
    (("--report-to", "wandb"), "--report-to wandb: the wandb package is not installed"),
    (("--compare", "missing.json"), "--compare missing.json: baselines file not found"),
])
def test_bad_options_are_named_before_training(bench, args, message):
    pytester, data, model = bench
    if args[0] == "--report-to" and __import__("importlib").util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    usage_error(run(pytester, data, tiny_bert_suite(pytester, model), *args), message)


def test_set_is_checked_against_the_cases_k_and_m_select(bench):
    """--set attention=bidirectional cannot apply to an encoder: with the encoder selected the run stops naming it,
    with it left out by -k or -m the decoder's case goes ahead (collected here, not trained)."""
    pytester, data, model = bench
    s = suite(pytester, f'[[model]]\nname = "tiny-bert"\nmodel = "{model}"\ntrain = {TRAIN}\n\n'
                        f'[[model]]\nname = "tiny-dec"\nfamily = "decoder"\nmethod = "lora"\nmodel = "{model}"\n'
                        f'train = {TRAIN}\n')
    setting = ("--set", "attention=bidirectional")
    usage_error(run(pytester, data, s, *setting), "model 'tiny-bert': attention applies to decoders")
    usage_error(run(pytester, data, s, *setting, "-m", "encoder"), "model 'tiny-bert': attention applies to decoders")
    for select in (("-k", "tiny-dec"), ("-k", "not bert"), ("-m", "decoder and bench")):
        result = run(pytester, data, s, *setting, *select, "--collect-only", "-q")
        out = result.stdout.str()
        assert result.ret == 0 and "test_ner[tiny-dec]" in out and "tiny-bert" not in out, result.stderr.str()[-2000:]


@pytest.mark.parametrize("args, options, kept", [
    (["bench"], {}, ["bert", "dec-a", "dec-b"]),
    (["bench/test_ner.py::test_ner[dec-a]"], {}, ["dec-a"]),
    (["bench", "bench/test_ner.py::test_ner[dec-a]"], {}, ["bert", "dec-a", "dec-b"]),  # the folder: all its cases
    (["bench"], {"deselect": ["bench/test_ner.py::test_ner[bert]"]}, ["dec-a", "dec-b"]),
    (["bench"], {"keyword": "dec and not dec-b"}, ["dec-a"]),
    (["bench"], {"keyword": "test_ner.py"}, ["bert", "dec-a", "dec-b"]),
    (["bench"], {"markexpr": "decoder"}, ["dec-a", "dec-b"]),
    (["bench"], {"markexpr": "bench(x=1)"}, []),  # no mark of a case has arguments
    (["bench"], {"keyword": "dec and"}, ["bert", "dec-a", "dec-b"]),  # pytest itself says the expression is wrong
])
def test_the_cases_checked_before_training_are_those_pytest_will_select(args, options, kept):
    from types import SimpleNamespace

    from nerbench_core.plugin import _selected

    config = SimpleNamespace(args=args, getoption=lambda name: options.get(name))
    cases = [(name, SimpleNamespace(family="encoder" if name == "bert" else "decoder"))
             for name in ("bert", "dec-a", "dec-b")]
    assert [case_id for case_id, _ in _selected(config, cases)] == kept


def test_stray_json_in_the_results_folder_is_passed_over_with_one_warning(bench):
    pytester, data, model = bench
    results = pytester.path / "results"
    results.mkdir()
    (results / "stray.json").write_text("[1, 2]")
    (results / "null.json").write_text("null")
    (results / "half.json").write_text('{"case": "x", "status": "passed"}')
    result = run(pytester, data, tiny_bert_suite(pytester, model), "--quick")
    assert result.ret == 0  # a case reads only the files named for its run key
    report = subprocess.run([sys.executable, "-m", "nerbench_core.report", "results"], cwd=pytester.path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert report.returncode == 0 and "| tiny-bert" in report.stdout
    for name, why in (("stray.json", "a JSON list"), ("null.json", "a JSON NoneType"), ("half.json", "missing run_key")):
        assert report.stderr.count(f"{name}: skipped, not a record this nerbench can read") == 1, report.stderr
        assert why in report.stderr
    (record,) = results.glob("tiny-bert-*.json")
    assert oct(record.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # readable by others, as files normally are
    assert list(results.glob("tiny-bert-*.test.conll")) and list(results.glob("tiny-bert-*.dev.conll"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_corrupt_dataset_cache_is_rebuilt(tmp_path):
    from nerbench_core.data import load_cached

    data = make_conll_dir(tmp_path / "data")
    first = load_cached(data, tmp_path / "cache")
    (cached,) = (tmp_path / "cache").glob("*.json")
    cached.write_text('{"splits": ')  # cut off
    with pytest.warns(UserWarning, match="dataset cache unreadable"):
        again = load_cached(data, tmp_path / "cache")
    assert again.fingerprint == first.fingerprint and json.loads(cached.read_text())["fingerprint"] == first.fingerprint


def test_dev_and_test_without_entities_are_said_so_and_f1_is_undefined(bench, tmp_path):
    pytester, _, model = bench
    data = make_conll_dir(tmp_path / "plain", sizes=(96, 24, 24))
    for split in ("dev", "test"):  # every tag O
        write_conll(data / f"{split}.txt", [[("Nothing", "O"), ("here", "O"), (".", "O")]] * 8)
    result = run(pytester, data, tiny_bert_suite(pytester, model), "--quick")
    out = result.stdout.str()
    assert "the dev split has no entities: dev F1 is undefined, the last epoch is kept" in out
    assert "the test split has no entities: test F1 is undefined" in out
    (path,) = (pytester.path / "results").glob("tiny-bert-*.json")
    record = json.loads(path.read_text())
    assert record["metrics"]["test"]["f1"] is None and record["metrics"]["selection"].startswith("last epoch")
    assert record["metrics"]["best_epoch"] == 2.0  # the last, not the first "best" of undefined scores
    assert "| undefined " in out


def test_an_incomplete_checkpoint_is_passed_over_for_the_complete_one_before(tmp_path):
    from nerbench_core.training.callbacks import SELECTION_FILE, last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "none") is None
    for step, complete in ((8, True), (16, True), (24, False)):  # killed between the Trainer's save and ours
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / SELECTION_FILE).write_text("{}")
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-16"


def test_a_second_process_on_the_same_case_waits_and_then_reuses_its_record(bench):
    """Two runs of one case (two terminals, or two hosts on a shared folder) never train it together: the run key's
    lock holds the second until the first is done, and it then reuses the first one's record."""
    pytester, data, model = bench
    s = tiny_bert_suite(pytester, model)
    args = [sys.executable, "-m", "pytest", "test_ner.py", "--data-dir", str(data), "--suite", str(s),
            "--results-dir", "results", "--cache-dir", "cache", "-p", "no:cacheprovider", "--quick"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(args, cwd=pytester.path, env=env, stdout=subprocess.PIPE, text=True)
    for line in first.stdout:  # the first is training: its lock is held
        if "training," in line:
            break
    second = subprocess.run(args, cwd=pytester.path, env=env, capture_output=True, text=True, timeout=600)
    first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0
    assert "(reused)" in second.stdout and "training," not in second.stdout
    assert len(list((pytester.path / "results").glob("tiny-bert-*.json"))) == 1


def test_ctrl_c_names_the_interrupted_case_and_records_nothing_for_it(bench):
    pytester, data, model = bench
    slow = TRAIN.replace("epochs = 2", "epochs = 200")
    s = suite(pytester, f'[[model]]\nname = "tiny-bert"\nmodel = "{model}"\ntrain = {slow}\n')
    args = [sys.executable, "-m", "pytest", "test_ner.py", "--data-dir", str(data), "--suite", str(s),
            "--results-dir", "results", "--cache-dir", "cache", "-p", "no:cacheprovider", "--quick"]
    proc = subprocess.Popen(args, cwd=pytester.path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "training," in line:
            break
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "nerbench: interrupted in case tiny-bert (seed 42): nothing was recorded for it" in out + err
    assert not list((pytester.path / "results").glob("tiny-bert-*.json"))


def test_bitsandbytes_says_nothing_about_kernels_it_does_not_need():
    out = subprocess.run([sys.executable, "-c", "import nerbench_core, bitsandbytes, peft"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "kernels-community" not in out.stderr + out.stdout


def test_a_recorded_case_leaves_no_checkpoints_and_a_rerun_starts_afresh(tmp_path, monkeypatch):
    """Checkpoints are what a killed case continues from: once its record is written they go, and --rerun never
    continues from an earlier run's (it would train nothing and report the old model)."""
    from nerbench_core import runner
    from nerbench_core.data import load_conll_dir
    from nerbench_core.options import RunOptions
    from nerbench_core.session import Session
    from nerbench_core.specs import ModelSpec

    dataset = load_conll_dir(make_conll_dir(tmp_path / "data"))
    opts = RunOptions(cache_dir=tmp_path / "cache")
    spec = ModelSpec(name="m", model="unused")
    work = runner.work_dir(runner.effective_spec(spec, opts), dataset, opts)
    seen = []

    def fake_case(spec, dataset, opts, report=None):
        seen.append(work.exists())  # what the training would continue from
        (work / "checkpoint-8").mkdir(parents=True)
        record = runner.new_record(spec, dataset, opts, "passed", metrics={"test": {"f1": 0.5}})
        return runner.CaseResult(record, {})

    monkeypatch.setattr(runner, "run_case", fake_case)
    Session(opts, tmp_path / "results").run(spec, dataset)
    assert seen == [False] and not work.exists()
    (work / "checkpoint-8").mkdir(parents=True)  # left by an earlier run that was killed
    Session(opts, tmp_path / "results", rerun=True).run(spec, dataset)
    assert seen == [False, False] and not work.exists()
