import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from nerbench_core.reporting.records import RunRecord, run_key
from nerbench_core.reporting.store import ResultStore, load_records
from nerbench_core.reporting.table import fold, render


def record(case, f1=0.9, key="k1", **kw):
    metrics = {"test": {"f1": f1, "precision": f1, "recall": f1, "strict_f1": f1,
                        "per_type": {"PER": {"f1": f1}, "LOC": {"f1": f1 - 0.1}}}}
    return RunRecord(case=case, status="passed", run_key=key, mode="quick", spec={"method": "full"}, spec_hash="h",
                     dataset={"fingerprint": "f"}, seed=1, metrics=metrics,
                     cost={"train_seconds": 12.0, "train_tokens_per_second": 1000.0, "padding_fraction": 0.2,
                           "peak_rss_gib": 1.5}, model={"method": "full", "params_total": 1000, "backend": "hf",
                                                        "params_trainable": 1000}, **kw)


def _writer(folder, prefix, n):
    store = ResultStore(folder)
    for i in range(n):
        store.write(record(f"{prefix}-{i}", key=f"{prefix}{i}"))


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(tmp_path, p, 40)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cases = sorted(r.case for r in ResultStore(tmp_path).records())
    assert cases == sorted([f"a-{i}" for i in range(40)] + [f"b-{i}" for i in range(40)])


def test_a_process_killed_mid_write_leaves_the_store_readable(tmp_path):
    ResultStore(tmp_path).write(record("kept"))
    # the child blocks between writing its temporary file and renaming it, and is killed there
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from tests.test_records import record
        from nerbench_core.reporting.store import ResultStore
        os.replace = lambda *a: (print("writing", flush=True), time.sleep(60))
        ResultStore({str(tmp_path)!r}).write(record("killed"))
    """)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert [r.case for r in ResultStore(tmp_path).records()] == ["kept"]
    assert any(p.name.endswith(".part") for p in tmp_path.iterdir())  # the torn file is not a record
    assert ResultStore(tmp_path).write(record("after"))  # and the lock was released by the kill


def test_find_returns_a_finished_record_by_run_key(tmp_path):
    store = ResultStore(tmp_path)
    store.write(record("m", key="abc"))
    store.write(record("broken", key="def", error="RuntimeError: boom"))
    assert store.find("abc").case == "m"
    assert store.find("def") is None  # a failed case with an error is run again
    assert store.find("zzz") is None
    assert run_key("s", "f", 1, "quick") != run_key("s", "f", 1, "full") != run_key("s", "f", 2, "full")


def test_records_merge_from_several_folders_and_files(tmp_path):
    a, b = ResultStore(tmp_path / "host-a"), ResultStore(tmp_path / "host-b")
    a.write(record("m1", key="1"))
    b.write(record("m2", key="2"))
    (tmp_path / "baselines.json").write_text(json.dumps([record("m3", key="3").to_dict()]))
    cases = sorted(r.case for r in load_records([a.folder, b.folder, tmp_path / "baselines.json"]))
    assert cases == ["m1", "m2", "m3"]


def test_table_shows_rows_per_type_scores_and_deltas():
    rows = fold([record("small", f1=0.80), record("big", f1=0.91)])
    next(r for r in rows if r.first.case == "big").baseline = 0.90
    text = render(rows, "all")
    assert "| small" in text and "| big" in text
    assert "F1 PER" in text and "F1 LOC" in text
    assert "91.00" in text and "81.00" in text  # F1 and the LOC column of "big"
    assert "+1.00" in text  # change against the baseline
    assert "1.5 GiB rss" in text
    compact = render(rows)  # the default columns
    assert "F1 PER" not in compact and "+1.00" in compact and max(len(line) for line in compact.splitlines()) <= 120


def test_report_prints_the_table_from_stored_records_alone(tmp_path, capsys):
    from nerbench_core.reporting.report import main

    ResultStore(tmp_path / "a").write(record("host-a-model", key="1"))
    ResultStore(tmp_path / "b").write(record("host-b-model", key="2"))
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "| host-a-model" in out and "| host-b-model" in out


def test_cost_table_compares_each_case_with_its_own_baseline_run():
    from nerbench_core.reporting.table import cost_rows

    def run(case, label, rate, steady, **train):
        r = record(case, key=f"{case}-{label}", label=label)
        r.spec = {"train": {"batch_size": 16, "group_by_length": label != "baseline", **train}}
        r.cost.update(train_tokens_per_second=rate, train_tokens_per_second_steady=steady, train_steps=40)
        return r

    records = [run("7b", "baseline", 400.0, 500.0), run("7b", "default", 3000.0, 4000.0, max_tokens_per_batch=4096),
               run("bert", "baseline", 10000.0, None), run("bert", "default", 20000.0, 30000.0)]
    headers, rows = cost_rows(records, baseline="baseline")
    column = {h: i for i, h in enumerate(headers)}
    ratio = {(r[0], r[1]): r[column["vs baseline"]] for r in rows}
    assert ratio[("7b", "default")] == "8.00x"  # steady against steady
    assert ratio[("bert", "default")] == "2.00x"  # the baseline has no steady rate: overall against overall
    assert rows[1][column["set-up"]] == "4096-token batches"
    assert rows[0][column["set-up"]] == "16 sentences, random"
    # the set-up column reads the speed plan's facts: what the run decided ("auto" checkpointing), not the spec's word
    auto = run("7b", "auto", 8000.0, 8000.0, max_tokens_per_batch=4096, gradient_checkpointing="auto")
    old = run("7b", "old", 5000.0, 5000.0, max_tokens_per_batch=4096, gradient_checkpointing=True)

    def levers(record, *on):
        record.model["accel"] = {k: {"on": k in on, "why": "", "detail": ""} for k in (
            "liger", "torch_compile", "fused_lora", "keep_dequantized", "gradient_checkpointing", "cuda_graphs")}

    levers(auto)
    levers(old, "gradient_checkpointing", "torch_compile")
    _, rows = cost_rows([auto, old])
    assert [r[column["set-up"]] for r in rows] == ["4096-token batches", "4096-token batches, grad ckpt, compiled"]
    levers(auto, "liger", "fused_lora", "cuda_graphs", "keep_dequantized")
    assert cost_rows([auto])[1][0][column["set-up"]] == ("4096-token batches, liger, fused LoRA, dequantized once, "
                                                         "graphs")


def test_the_cost_table_says_what_an_earlier_case_still_held_when_a_case_began():
    from nerbench_core.reporting.table import cost_rows

    alone, later = record("bert", key="alone"), record("bert", key="later", label="after the 14b")
    alone.cost.update(peak_gpu_allocated_gib=3.2, peak_gpu_reserved_gib=5.2, gpu_allocated_at_start_gib=0.0)
    later.cost.update(peak_gpu_allocated_gib=4.8, peak_gpu_reserved_gib=6.9, gpu_allocated_at_start_gib=1.8)
    headers, rows = cost_rows([alone, later])
    peak = headers.index("peak GiB (alloc / reserved)")
    assert [r[peak] for r in rows] == ["3.2 / 5.2", "4.8 / 6.9 (1.8 held at start)"]


def test_time_table_gives_each_case_its_share_of_the_suite():
    from nerbench_core.reporting.table import time_rows

    records = []
    for case, seconds in (("small", 60.0), ("big", 180.0)):
        r = record(case, key=case)
        r.cost.update(load_seconds=2.0, train_seconds=seconds - 10, dev_eval_seconds=5.0, test_eval_seconds=1.5,
                      case_seconds=seconds, checkpoint_seconds=0.5, graph_first_steps_seconds=seconds / 20)
        records.append(r)
    headers, rows = time_rows(records)
    share = {row[0]: row[headers.index("share")] for row in rows}
    assert share == {"big": "75%", "small": "25%", "all": "100%"}  # largest first, then the total
    assert rows[-1][headers.index("case s")] == "240.0 (4.0 min)"
    assert [r[headers.index("first steps s")] for r in rows] == ["9.0", "3.0", ""]  # part of train s
    assert [r[headers.index("checkpoints s")] for r in rows] == ["0.5", "0.5", ""]
    assert [r[headers.index("rest s")] for r in rows] == ["", "", ""]  # not every part timed: no rest to show
    for r in records:
        r.cost.update(prepare_seconds=0.3, trainer_setup_seconds=0.1, scoring_seconds=0.1)
    records[0].cost["save_seconds"] = 0.4  # --save-models: the save is a part of its own
    headers, rows = time_rows(records)
    # largest first: 180 - (2 + 0.3 + 0.1 + 170 + 5 + 0.5 + 1.5 + 0.1); 60 - (... + 50 + ... + 0.4 saving)
    assert [r[headers.index("rest s")] for r in rows] == ["0.5", "0.1", ""]
    records[1].cost["resumed_from"] = "checkpoint-8"  # its dev scorings include the interrupted run's: no rest
    headers, rows = time_rows(records)
    assert [r[headers.index("rest s")] for r in rows] == ["", "0.1", ""]


def test_a_part_timed_twice_adds_up_and_a_block_that_raises_is_timed():
    import time

    from nerbench_core.runner import timed

    laps = {}
    for _ in range(2):
        with timed(laps, "scoring_seconds"):
            time.sleep(0.02)
    with pytest.raises(ValueError), timed(laps, "prepare_seconds"):
        time.sleep(0.02)
        raise ValueError
    assert laps["scoring_seconds"] >= 0.04 and laps["prepare_seconds"] >= 0.02


def test_records_name_the_commit_the_run_started_from(tmp_path, monkeypatch):
    import subprocess

    from nerbench_core.reporting import environment as records

    repo = tmp_path / "repo"
    repo.mkdir()
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                       capture_output=True)

    git("init", "-q")
    (repo / "f").write_text("1")
    git("add", "f")
    git("commit", "-qm", "one")
    first = records.git_commit(repo)
    (repo / "f").write_text("2")
    git("commit", "-qam", "two")  # the checkout moves on while the run goes on
    assert records.git_commit(repo) == first and first["commit"] and first["dirty"] is False
    assert first["diff_sha256"] is None


def test_a_dirty_checkouts_record_names_the_hash_of_its_changes(tmp_path):
    import hashlib

    from nerbench_core.reporting import environment

    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q"], ["add", "f"], ["commit", "-qm", "one"]):
        (repo / "f").write_text("1\n")
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                       capture_output=True)
    (repo / "f").write_text("2\n")
    state = environment.git_commit(repo)
    diff = subprocess.run(["git", "diff", "HEAD"], cwd=repo, capture_output=True, check=True).stdout
    assert state["dirty"] is True and state["diff_sha256"] == hashlib.sha256(diff).hexdigest()[:16]


def test_report_exports_every_format_and_refuses_unknown_ones(tmp_path, capsys):
    import csv
    import io

    from nerbench_core.reporting.report import main

    ResultStore(tmp_path / "r").write(record("m", f1=0.8))
    for fmt, check in (("csv", lambda out: next(csv.reader(io.StringIO(out)))[:2] == ["model", "method"]),
                       ("json", lambda out: json.loads(out)[0]["model"] == "m"),
                       ("markdown", lambda out: out.startswith("data: f, quick\n| model")),  # one data set: a line
                       ("html", lambda out: "<table>" in out),
                       ("latex", lambda out: "\\begin{tabular}" in out)):
        assert main([str(tmp_path / "r"), "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert check(out), (fmt, out[:200])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "r"), "--format", "xlsx"])
    assert "--format 'xlsx': expected one of csv, json, markdown" in capsys.readouterr().err
    assert main([str(tmp_path / "r"), "--export", str(tmp_path / "run.json")]) == 0
    exported = json.loads((tmp_path / "run.json").read_text())
    assert exported["records"][0]["case"] == "m" and exported["table"]["rows"][0]["F1"] == "80.00"
    assert "F1 PER" in exported["table"]["columns"]  # the whole table, every column


def test_exports_and_plots_come_from_the_stored_baselines(tmp_path, capsys):
    from pathlib import Path

    from nerbench_core.reporting.report import main

    baselines = Path(__file__).resolve().parent.parent / "bench" / "baselines.json"
    for fmt in ("csv", "json", "markdown"):
        assert main([str(baselines), "--format", fmt]) == 0
        assert "minilm" in capsys.readouterr().out
    assert main([str(baselines), "--plot", str(tmp_path / "plots")]) == 0
    assert len(list((tmp_path / "plots").glob("*.png"))) >= 3 and (tmp_path / "plots" / "index.md").is_file()


def test_seeds_fold_into_one_row_with_mean_and_standard_deviation():
    runs = [record("m", f1=f1, key=f"k{seed}", config_key="c") for seed, f1 in ((1, 0.80), (2, 0.82), (3, 0.84))]
    for r, seed in zip(runs, (1, 2, 3)):
        r.seed = seed
    (row,) = fold(runs)
    assert "82.00 ± 2.00 (n=3)" in render([row])
    assert len(fold(runs, per_seed=True)) == 3  # on request, a row per seed
    assert [line[:4] for line in render([row], "all").splitlines()] == ["data", "| mo", "|---", "| m "]  # one row


def test_the_regression_gate_knows_the_seed_noise(tmp_path):
    from nerbench_core.reporting.baselines import Baselines, gate

    steady = gate([0.52, 0.53, 0.52, 0.51, 0.52], tolerance=1.5)
    assert steady.checked and 0 < steady.catches < 5  # mean - t(0.99, 4) s sqrt(1 + 1/5)
    assert abs(steady.catches - 100 * 3.7469 * 0.00707107 * (1.2 ** 0.5)) < 0.01
    noisy = gate([0.44, 0.57, 0.54, 0.53, 0.57], tolerance=1.5)
    assert not noisy.checked and noisy.why.startswith("no regression check")
    few = gate([0.5], tolerance=2.0)
    assert few.threshold == pytest.approx(0.48) and "fixed tolerance 2.00" in few.why
    path = tmp_path / "b.json"
    stored = Baselines(path, {})
    runs = []
    for seed, f1 in enumerate((0.52, 0.53, 0.52, 0.51, 0.52)):
        r = record("m", f1=f1, key=f"s{seed}")
        r.seed = seed
        runs.append(r)
    labelled = record("m", f1=0.9, key="x", label="experiment")  # an experiment is no baseline
    stored.merge(runs + [labelled])
    loaded = Baselines.load(path)
    assert [r.seed for r in loaded.records("m", "quick")] == [0, 1, 2, 3, 4]
    assert loaded.regression(record("m", f1=0.515)) is None
    assert "below the regression bound" in loaded.regression(record("m", f1=0.48))
    assert loaded.records("m", "quick", fingerprint="other data") == []  # other data: no baseline


def test_a_verdict_comes_from_saved_predictions_and_refuses_other_data(tmp_path, capsys):
    from nerbench_core.reporting.predictions import SplitPredictions
    from nerbench_core.reporting.report import main

    words = [["John", "lives", "in", "Paris"]] * 60
    gold = [["B-PER", "O", "O", "B-LOC"]] * 60
    good = [["B-PER", "O", "O", "B-LOC"]] * 55 + [["O", "O", "O", "O"]] * 5
    bad = [["B-PER", "O", "O", "O"]] * 40 + [["O", "O", "O", "B-LOC"]] * 20
    docs = [i // 2 for i in range(60)]  # 30 documents
    store = ResultStore(tmp_path / "r")
    for case, pred, f1 in (("good", good, 0.95), ("bad", bad, 0.66)):
        store.write(record(case, f1=f1, key=case), {"test": SplitPredictions(words, gold, pred, docs)})
    assert main([str(tmp_path / "r"), "--versus", "good", "bad", "--resamples", "2000"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("good beats bad by +") and "paired test over 30 documents" in out
    other = record("elsewhere", f1=0.9, key="e")
    other.dataset = {"fingerprint": "g"}
    store.write(other)
    assert main([str(tmp_path / "r"), "--versus", "good", "elsewhere"]) == 2
    assert "ran on different test data" in capsys.readouterr().err


def test_baselines_keep_predicted_tags_alone_and_verdicts_join_them_with_the_data(tmp_path, capsys):
    """A baselines file holds no copy of the data: its predictions are tags alone, joined with the words, gold tags
    and documents of the data folder whose fingerprint the record names (the quick sample drawn again)."""
    import gzip

    from nerbench_core.data import SampleSize, load_conll_dir, sample
    from nerbench_core.reporting.baselines import Baselines
    from nerbench_core.reporting.predictions import SplitPredictions
    from nerbench_core.reporting.report import main
    from nerbench_core.reporting.store import saved_predictions

    from .helpers import make_conll_dir

    folder = make_conll_dir(tmp_path / "data", sizes=(40, 30, 30))
    quick = sample(load_conll_dir(folder), SampleSize(train=20, dev=10, test=20))
    test = quick["test"]
    words, gold, docs = [list(s.words) for s in test], [list(s.tags) for s in test], [s.doc for s in test]
    store = ResultStore(tmp_path / "results")
    for case, f1, flip in (("good", 0.9, 0), ("worse", 0.6, 12)):
        pred = [["O"] * len(g) if i < flip else list(g) for i, g in enumerate(gold)]
        r = record(case, f1=f1, key=case)
        r.dataset = {"fingerprint": quick.fingerprint, "sample": quick.sample,
                     "full_fingerprint": quick.full_fingerprint, "source": str(tmp_path / "elsewhere")}
        store.write(r, {"test": SplitPredictions(words, gold, pred, docs)})
    results = load_records([tmp_path / "results"])
    path = tmp_path / "baselines.json"
    Baselines(path, {}).merge(results)

    stored = Baselines.records_in(path)
    names = [r.predictions["test"] for r in stored]
    assert all(n.endswith(".test.tags.gz") for n in names)
    text = "".join(gzip.decompress((tmp_path / n).read_bytes()).decode() for n in names)
    assert not {w for sent in words for w in sent} & set(text.split())  # tags alone: no word of the data
    for r in stored:
        original = saved_predictions(next(x for x in results if x.case == r.case), "test")
        assert saved_predictions(r, "test", [folder]) == original
        assert saved_predictions(r, "test") is None  # its data folder ("elsewhere") is not there
        other = make_conll_dir(tmp_path / "other", sizes=(40, 30, 30), seed=5)
        assert saved_predictions(r, "test", [other]) is None  # other data: not joined
    assert main([str(path), "--versus", "good", "worse", "--resamples", "500", "--data-dir", str(folder)]) == 0
    assert capsys.readouterr().out.startswith("good beats worse")
    assert main([str(path), "--versus", "good", "worse", "--resamples", "500"]) == 2
    assert "--data-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(path), "--data-dir", str(tmp_path / "missing")])
    assert f"--data-dir {tmp_path / 'missing'}: not a folder" in capsys.readouterr().err
    (tmp_path / names[0]).write_bytes(gzip.compress(b"O O\n"))  # a tags file that is not of this split
    assert main([str(path), "--versus", "good", "worse", "--resamples", "500", "--data-dir", str(folder)]) == 2
    assert f"cannot be read ({tmp_path / names[0]}: 1 sentences, the data's split has 20)" in capsys.readouterr().err


def test_a_tags_file_that_does_not_fit_its_split_names_the_file_and_line(tmp_path):
    from nerbench_core.data import SampleSize
    from nerbench_core.reporting.predictions import SplitPredictions, read_tags, write_tags

    preds = SplitPredictions([["a", "b"], ["c"]], [["O", "B-PER"], ["O"]], [["O", "B-PER"], ["B-LOC"]], [0, 0])
    path = write_tags(tmp_path / "x.test.tags.gz", preds)
    assert read_tags(path, preds.words, preds.gold, preds.docs) == preds
    with pytest.raises(ValueError, match=r"x\.test\.tags\.gz: 2 sentences, the data's split has 1"):
        read_tags(path, preds.words[:1], preds.gold[:1], preds.docs[:1])
    with pytest.raises(ValueError, match=r"x\.test\.tags\.gz:2: 1 tags for a sentence of 2 words"):
        read_tags(path, [["a", "b"], ["c", "d"]], [["O", "O"], ["O", "O"]], [0, 0])
    size = SampleSize(train=7, dev=8, test=9, seed=3)
    assert SampleSize.described(size.describe()) == size and SampleSize.described("full") is None


def test_records_say_the_cards_power_limit_and_top_clock_where_nvidia_smi_answers(monkeypatch):
    """Cards of one name differ by them; a field nvidia-smi cannot read, or no nvidia-smi at all, leaves them out."""
    import subprocess
    from types import SimpleNamespace

    from nerbench_core import cost

    assert cost.parse_limits("700.00, 1980\n") == {"power_limit_w": 700.0, "max_sm_clock_mhz": 1980.0}
    assert cost.parse_limits("[N/A], 1410") == {"power_limit_w": None, "max_sm_clock_mhz": 1410.0}
    assert cost.parse_limits("") is None and cost.parse_limits("No devices were found") is None

    def answers(args, **kwargs):
        assert args[:3] == ["nvidia-smi", "-i", "GPU-1234"]
        return SimpleNamespace(stdout="600.00, 1785\n")

    monkeypatch.setattr(subprocess, "run", answers)
    cost.gpu_limits.cache_clear()
    assert cost.gpu_limits("GPU-1234") == {"power_limit_w": 600.0, "max_sm_clock_mhz": 1785.0}
    cost.gpu_limits.cache_clear()

    def missing(args, **kwargs):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(subprocess, "run", missing)
    assert cost.gpu_limits("GPU-1234") is None
    cost.gpu_limits.cache_clear()
