"""The distributed driver (nerbench_core.distributed) on submitit's local engine: one job per case, retries of a job
whose process was killed, failed records for cases that never finished; and the Slurm job array it would submit."""
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from .helpers import make_conll_dir, tiny_bert

pytest.importorskip("submitit")

ROOT = Path(__file__).resolve().parent.parent
TRAIN = '{ learning_rate = 5e-3, epochs = EPOCHS, batch_size = 8, max_length = 32, warmup_ratio = 0.0 }'
# A conftest for the kill tests: with NERBENCH_TEST_KILL=CASE:MARKER, the first process that trains CASE (MARKER does
# not exist yet) creates MARKER and SIGKILLs itself when the first epoch is scored, in the middle of training, as the
# kernel's out-of-memory killer would. Later attempts find MARKER and train on. No timing involved.
KILLING_CONFTEST = '''
pytest_plugins = ["nerbench_core.plugin"]
import os, signal, sys
from pathlib import Path

import nerbench_core.runner as runner

_train = runner.train


def train(model, tokenizer, spec, accel, train_split, evaluate_dev, *args, **kwargs):
    case, _, marker = os.environ.get("NERBENCH_TEST_KILL", "").partition(":")
    if spec.name == case and not Path(marker).exists():
        def dying(trained):
            Path(marker).write_text(str(os.getpid()))
            print(f"{case}: killed on purpose by the test", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return _train(model, tokenizer, spec, accel, train_split, dying, *args, **kwargs)
    return _train(model, tokenizer, spec, accel, train_split, evaluate_dev, *args, **kwargs)


runner.train = train
'''


@pytest.fixture
def folder(pytester, tmp_path, monkeypatch):
    """A pytester folder holding the real bench test and plugin, tiny data and a tiny local BERT."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("NERBENCH_DATA_DIR", "NERBENCH_SUITE", "NERBENCH_RESULTS_DIR", "NERBENCH_CACHE_DIR", "NERBENCH_GPUS",
                "NERBENCH_TEST_KILL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CPU path, deterministic for a seed
    shutil.copy(ROOT / "bench" / "test_ner.py", pytester.path / "test_ner.py")
    pytester.makeconftest('pytest_plugins = ["nerbench_core.plugin"]')
    data = make_conll_dir(tmp_path / "data", sizes=(96, 24, 24))
    model = tiny_bert(tmp_path / "tiny-bert")
    return pytester, data, model


def suite(pytester, model, names, epochs=1):
    body = "".join(f'[[model]]\nname = "{n}"\nmodel = "{model}"\ntrain = {TRAIN}\n\n' for n in names)
    return pytester.makefile(".toml", suite=body.replace("EPOCHS", str(epochs)))


def bench_args(data, suite_file, results):
    return ["test_ner.py", "--data-dir", str(data), "--suite", str(suite_file), "--results-dir", results,
            "--cache-dir", "cache", "--quick"]


def distributed(pytester, *args):
    return pytester.run(sys.executable, "-m", "nerbench_core.distributed", "--engine", "local", "--poll", "0.5",
                        *args, timeout=300)


def records(folder: Path) -> dict[tuple[str, int], dict]:
    """The records of a results folder by case and seed (one each)."""
    found = {}
    for path in folder.glob("*.json"):
        record = json.loads(path.read_text())
        key = (record["case"], record["seed"])
        assert key not in found, f"two records of {key} in {folder}"
        found[key] = record
    return found


def test_each_case_is_one_job_and_the_records_equal_a_local_run(folder):
    pytester, data, model = folder
    s = suite(pytester, model, ["tiny-a", "tiny-b"])
    s.write_text(s.read_text().replace("learning_rate = 5e-3", "learning_rate = 3e-3", 1))  # two different cases
    args = bench_args(data, s, "results")
    result = distributed(pytester, "--max-parallel", "2", "--folder", "logs", "--", *args)
    out = result.stdout.str()
    assert result.ret == 0, out + result.stderr.str()
    result.stdout.fnmatch_lines_random(["nerbench distributed: 2 cases as local jobs, 2 at a time; job logs in *logs",
                                        "nerbench distributed: tiny-a: submitted as job *",
                                        "nerbench distributed: tiny-b: submitted as job *",
                                        "nerbench distributed: [[]?/2] tiny-a: passed in *s (job *",
                                        "nerbench distributed: [[]?/2] tiny-b: passed in *s (job *",
                                        "*nerbench results*", "records: *results",
                                        "nerbench distributed: 2 of 2 cases passed*"])
    jobs = {line.rsplit(" ", 1)[-1] for line in out.splitlines() if ": submitted as job " in line}
    assert len(jobs) == 2  # one job per case
    table = out[out.index("nerbench results"):]
    assert "| tiny-a " in table and "| tiny-b " in table
    # each job ran its one case: pytest with the run's arguments and that case's node id
    logs = "".join(p.read_text() for p in (pytester.path / "logs").glob("*_0_log.out"))
    assert logs.count("1 passed") == 2 and "-p no:cacheprovider" in logs
    assert "test_ner.py::test_ner[tiny-a]" in logs and "test_ner.py::test_ner[tiny-b]" in logs

    # the same cases run by plain pytest, in one process: the same records (the CPU path is deterministic for a seed)
    local = pytester.runpytest_subprocess(*bench_args(data, s, "plain"), "-p", "no:cacheprovider", timeout=300)
    local.assert_outcomes(passed=2)
    here, plain = records(pytester.path / "results"), records(pytester.path / "plain")
    assert set(here) == set(plain) == {("tiny-a", 42), ("tiny-b", 42)}  # one results folder, one record per case
    for key, record in here.items():
        other = plain[key]
        assert record["status"] == other["status"] == "passed"
        assert record["run_key"] == other["run_key"]
        assert record["metrics"]["test"] == other["metrics"]["test"]  # the same F1, interval, per type
        assert record["metrics"]["loss_curve"] == other["metrics"]["loss_curve"]
        f1 = f"{100 * record['metrics']['test']['f1']:.2f}"
        assert f"| {key[0]} " in local.stdout.str() and f1 in table and f1 in local.stdout.str()
    assert any(r["metrics"]["test"]["f1"] > 0 for r in here.values())  # a model that learnt, not an all-O one



def test_a_killed_job_is_retried_and_its_case_ends_with_its_record(folder, tmp_path, monkeypatch):
    pytester, data, model = folder
    pytester.makeconftest(KILLING_CONFTEST)
    marker = tmp_path / "killed-once"
    monkeypatch.setenv("NERBENCH_TEST_KILL", f"victim:{marker}")
    s = suite(pytester, model, ["victim"], epochs=2)
    result = distributed(pytester, "--retries", "1", "--", *bench_args(data, s, "results"))
    out = result.stdout.str()
    assert result.ret == 0, out + result.stderr.str()
    assert marker.exists()  # the first attempt was killed in training
    result.stdout.fnmatch_lines(["nerbench distributed: victim: submitted as job *",
                                 "nerbench distributed: victim: died after *s (job *, attempt 1 of 2): pytest was "
                                 "killed by SIGKILL*; submitting it again",
                                 "    victim: killed on purpose by the test",  # the last lines of its stderr
                                 "nerbench distributed: victim: submitted as job *, attempt 2 of 2",
                                 "nerbench distributed: [[]1/1] victim: passed in *s (job *, attempt 2 of 2)",
                                 "*nerbench results*", "*| victim *", "nerbench distributed: 1 of 1 cases passed*"])
    (record,) = records(pytester.path / "results").values()  # its record, and no crash record beside it
    assert record["status"] == "passed" and record["error"] is None and record["case"] == "victim"


def test_without_retries_a_killed_case_is_a_failed_record_and_a_failed_run(folder, tmp_path, monkeypatch):
    pytester, data, model = folder
    pytester.makeconftest(KILLING_CONFTEST)
    monkeypatch.setenv("NERBENCH_TEST_KILL", f"victim:{tmp_path / 'killed-once'}")
    s = suite(pytester, model, ["victim"], epochs=2)
    result = distributed(pytester, "--retries", "0", "--", *bench_args(data, s, "results"))
    out = result.stdout.str()
    assert result.ret == 1, out + result.stderr.str()
    assert "submitting it again" not in out
    result.stdout.fnmatch_lines(["nerbench distributed: [[]1/1] victim: failed in *s: pytest was killed by SIGKILL*",
                                 "    victim: killed on purpose by the test",
                                 "*nerbench results*", "*| victim *failed: worker crashed: pytest was killed by*",
                                 "nerbench distributed: 0 of 1 cases passed; not passed: victim*"])
    (path,) = (pytester.path / "results").glob("victim-quick-crashed-*.json")  # nerbench's crash record
    record = json.loads(path.read_text())
    assert record["status"] == "failed"
    assert record["error"].startswith("worker crashed: pytest was killed by SIGKILL")
    assert "killed on purpose by the test" in record["error"]


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """srun and sbatch stand-ins: sbatch keeps the script it is given and answers as Slurm does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = tmp_path / "sbatch"
    scripts.mkdir()
    for name, body in (("srun", "exit 0"), ("sbatch", f'cp "$1" "{scripts}/$(date +%s%N).sh"\n'
                                                      'echo "Submitted batch job 4242"')):
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return scripts


def test_slurm_gets_one_job_array_one_gpu_per_task(fake_slurm, tmp_path, capsys):
    from nerbench_core.distributed import driver as d

    args = d.parser().parse_args(["--engine", "slurm", "--slurm-partition", "gpu", "--slurm-time", "90",
                                  "--max-parallel", "2", "--slurm-setup", "source ~/venv/bin/activate",
                                  "--slurm-param", "mail-type=END"])
    cases = [{"case_id": f"m-seed{s}", "nodeid": f"bench/test_ner.py::test_ner[m-seed{s}]",
              "target": f"bench/test_ner.py::test_ner[m-seed{s}]", "name": "m", "seed": s,
              "path": str(ROOT / "bench" / "test_ner.py"), "item": f"test_ner[m-seed{s}]"} for s in (42, 43, 44)]
    info = {"cases": cases, "positional": [0], "results_dir": str(tmp_path / "r"), "cache_dir": str(tmp_path / "c")}
    driver = d.Driver(args, info, ["bench", "--suite", "offline", "--quick"], tmp_path / "logs", tmp_path / "logs",
                      d.make_executor(args, tmp_path / "logs"))
    driver.submit()
    (script,) = [p.read_text() for p in fake_slurm.glob("*.sh")]  # one sbatch call: a job array
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --nodes=1", "#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --mail-type=END",
                 "source ~/venv/bin/activate"):
        assert line in script
    assert [c.job_id for c in driver.running] == ["4242_0", "4242_1", "4242_2"]
    # each job: the run's arguments without their test path, then its case's node id
    job = driver.job_for(driver.cases[0])
    assert job.pytest_args == ("-p", "no:cacheprovider", "-p", "nerbench_core.distributed.jobs", "--capture=tee-sys",
                               "--suite", "offline", "--quick", "bench/test_ner.py::test_ner[m-seed42]")
    assert "m-seed43: submitted as job 4242_1" in capsys.readouterr().out


def test_options_that_do_not_fit_a_distributed_run_are_refused():
    from nerbench_core.distributed import driver as d

    assert "--max-parallel" in d.refused(["bench", "-n", "4"])
    assert "--max-parallel" in d.refused(["bench", "-n4"])
    assert "nerbench_core.report" in d.refused(["bench", "--export=run.json"])
    assert d.refused(["bench", "--suite", "offline", "--quick", "-k", "minilm"]) is None
    with pytest.raises(SystemExit):
        d.main(["--engine", "local", "bench"])  # no -- before the pytest arguments
