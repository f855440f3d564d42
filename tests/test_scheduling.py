"""Scheduling by expected durations (issue 20): each case's expected time from its earlier records (or its size), the
longest-first split over xdist workers and --shard hosts, and the xdist scheduler that hands the split out."""
import json
import random
import re
import shutil
from types import SimpleNamespace

import pytest

from nerbench_core.reporting.records import RunRecord
from nerbench_core.reporting.store import ResultStore
from nerbench_core.scheduling import (CPU, DEFAULT_SECONDS_PER_UNIT, ESTIMATED, MEASURED, expected_durations,
                                      longest_first, lpt_partition, work_units, worth_taking)
from nerbench_core.specs import ModelSpec, TrainConfig
from nerbench_core.xdist_scheduler import ExpectedTimeScheduling

from .helpers import make_conll_dir
from .test_bench_plugin import TRAIN, bench, run, suite  # noqa: F401 (bench: fixture)

# The seed suite's case times on one GPU (seconds; docs/PERFORMANCE.md 2.2), longest first
SEED = {"qwen1.5-14b": 234.0, "qwen1.5-7b": 112.0, "qwen1.5-4b": 91.0, "qwen1.5-1.8b": 48.0, "qwen1.5-0.5b": 38.0,
        "bert-base-cased": 23.0}


# ---------------------------------------------------------------- the longest-first split


def test_lpt_splits_the_seed_suite_over_two_gpus_near_half_each():
    parts = lpt_partition(list(SEED.items()), 2)
    assert parts == [["qwen1.5-14b", "qwen1.5-0.5b"], ["qwen1.5-7b", "qwen1.5-4b", "qwen1.5-1.8b", "bert-base-cased"]]
    longest = max(sum(SEED[name] for name in part) for part in parts)
    assert longest == 274.0 and longest <= 0.55 * sum(SEED.values())  # xdist's load scheduler: 0.72


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 6, 7])
def test_lpt_puts_every_job_in_exactly_one_part_whatever_the_given_order(parts):
    jobs = list(SEED.items())
    split = lpt_partition(jobs, parts)
    assert len(split) == parts
    assert sorted(name for part in split for name in part) == sorted(SEED)
    shuffled = jobs[:]
    random.Random(parts).shuffle(shuffled)
    assert lpt_partition(shuffled, parts) == split  # distinct times: the same split from any order


def test_lpt_ties_keep_the_given_order_and_existing_loads_count():
    equal = [(name, 10.0) for name in "abcde"]
    assert lpt_partition(equal, 2) == [["a", "c", "e"], ["b", "d"]]
    assert lpt_partition(equal, 2) == lpt_partition(equal, 2)
    # a part that holds 25 s already gets the next job only once the others have caught up
    assert lpt_partition(equal, 2, loads=[25.0, 0.0]) == [["d"], ["a", "b", "c", "e"]]
    with pytest.raises(ValueError):
        lpt_partition(equal, 0)
    # jobs of no known time never raise a part's load: they are spread by count, not all put in the first part
    assert lpt_partition([(name, 0.0) for name in "abcd"], 2) == [["a", "c"], ["b", "d"]]


def test_an_idle_worker_takes_queued_jobs_only_while_that_ends_the_pair_sooner():
    queued = [("4b", 91.0), ("1.8b", 48.0), ("bert", 23.0)]
    # from the end of the queue; then the 4B would make the idle one end at 162 s, after the busy one's 79 s
    assert worth_taking(0.0, 150.0, queued) == ["bert", "1.8b"]
    assert worth_taking(0.0, 250.0, queued) == ["bert", "1.8b", "4b"]  # 162 s against 88 s: sooner than 179 s
    assert worth_taking(240.0, 250.0, queued) == []  # 240 + 23 > 250: taking would only move the end
    assert worth_taking(0.0, 250.0, []) == []


# ---------------------------------------------------------------- expected durations


def spec(name, architecture=None, epochs=3.0):
    return ModelSpec(name=name, model="m", architecture=architecture, train=TrainConfig(epochs=epochs))


def earlier(case, seconds, created="2026-12-01T10:00:00+00:00", gpu=None, mode="full", epochs=3.0, key=None,
            status="passed", **fields):
    """A record of an earlier run of ``case`` that took ``seconds``."""
    machine = {"gpu": {"name": gpu}} if gpu else {}
    return RunRecord(case=case, status=status, run_key=key or f"earlier-{case}-{created[:19]}-{gpu}", mode=mode,
                     spec={"train": {"epochs": epochs, "max_steps": None}}, spec_hash="h", dataset={}, seed=42,
                     metrics={"test": {"f1": 0.9}}, cost={"case_seconds": seconds},
                     environment={"machine": machine}, created=created, **fields)


def test_a_case_with_records_is_expected_to_take_what_its_record_says():
    specs = [spec("bert-base-cased", "bert-base-cased")]
    records = [earlier("bert-base-cased", 23.0, gpu="NVIDIA H200"), earlier("other", 999.0)]
    (expected,) = expected_durations(specs, records, "full", False, "NVIDIA H200").values()
    assert (expected.seconds, expected.source) == (23.0, MEASURED)


def test_records_of_the_same_gpu_come_before_more_recent_ones_of_another():
    specs = [spec("qwen1.5-7b", "qwen1.5-7b")]
    records = [earlier("qwen1.5-7b", 112.0, "2026-12-01T10:00:00+00:00", gpu="NVIDIA H200"),
               earlier("qwen1.5-7b", 130.0, "2026-12-02T10:00:00+00:00", gpu="NVIDIA H200"),
               earlier("qwen1.5-7b", 400.0, "2026-12-03T10:00:00+00:00", gpu="NVIDIA A10")]
    seconds = {device: expected_durations(specs, records, "full", False, device)["qwen1.5-7b"].seconds
               for device in ("NVIDIA H200", "NVIDIA A10", CPU, None)}
    # the most recent of the same GPU; without one of this GPU, or without a preference (--shard), the most recent
    assert seconds == {"NVIDIA H200": 130.0, "NVIDIA A10": 400.0, CPU: 400.0, None: 400.0}


def test_records_that_say_nothing_of_this_run_are_passed_over():
    specs = [spec("qwen1.5-7b", "qwen1.5-7b")]
    unusable = [earlier("qwen1.5-7b", 5.0, mode="quick"),  # another amount of data
                earlier("qwen1.5-7b", 7.0, synthetic=True),  # random weights
                earlier("qwen1.5-7b", 9.0, status="failed", error="CUDA out of memory"),  # stopped early
                earlier("qwen1.5-7b", 8.0, status="skipped")]
    resumed = earlier("qwen1.5-7b", 6.0)  # continued from a checkpoint: only its last epoch timed
    resumed.cost["resumed_from"] = "checkpoint-2"
    probe = earlier("qwen1.5-7b", 20.0)  # a speed probe cut at 40 steps
    probe.spec["train"]["max_steps"] = 40
    unusable += [resumed, probe]
    expected = expected_durations(specs, unusable, "full", False, CPU)["qwen1.5-7b"]
    assert expected.source == ESTIMATED
    # a case below its floor trained to the end: its time counts
    below = earlier("qwen1.5-7b", 111.0, status="failed")
    assert expected_durations(specs, [*unusable, below], "full", False, CPU)["qwen1.5-7b"].seconds == 111.0


def test_a_record_of_other_epochs_is_scaled_to_the_epochs_run_now():
    specs = [spec("qwen1.5-7b", "qwen1.5-7b", epochs=3.0)]
    records = [earlier("qwen1.5-7b", 40.0, epochs=1.0)]
    assert expected_durations(specs, records, "full", False, CPU)["qwen1.5-7b"].seconds == 120.0


def test_cases_without_records_are_estimated_on_the_scale_of_the_measured_ones():
    specs = [spec(name, name) for name in SEED]
    records = [earlier("qwen1.5-14b", 234.0), earlier("bert-base-cased", 23.0)]
    expected = expected_durations(specs, records, "full", False, CPU)
    units = work_units(specs)
    scale = (234.0 + 23.0) / (units["qwen1.5-14b"] + units["bert-base-cased"])
    assert {n: e.source for n, e in expected.items()} == {n: MEASURED if n in ("qwen1.5-14b", "bert-base-cased")
                                                          else ESTIMATED for n in SEED}
    for name in ("qwen1.5-7b", "qwen1.5-4b", "qwen1.5-1.8b", "qwen1.5-0.5b"):
        assert expected[name].seconds == pytest.approx(scale * units[name])
    # estimated in the order of their sizes, and between the measured ones
    order = sorted(SEED, key=lambda n: -expected[n].seconds)
    assert order == list(SEED)
    # the estimates split the suite over two GPUs as the measured times do
    assert lpt_partition([(n, e.seconds) for n, e in expected.items()], 2) == lpt_partition(list(SEED.items()), 2)


def test_without_any_record_estimates_follow_size_and_epochs():
    specs = [spec("big", "qwen1.5-7b"), spec("small", "qwen1.5-0.5b"),
             spec("unknown")]  # no architecture: counts as the median of the known ones
    expected = expected_durations(specs, [], "full", False, CPU)
    assert all(e.source == ESTIMATED for e in expected.values())
    assert expected["big"].seconds == pytest.approx(DEFAULT_SECONDS_PER_UNIT * work_units(specs)["big"])
    assert expected["small"].seconds < expected["unknown"].seconds < expected["big"].seconds
    longer = expected_durations([spec("small", "qwen1.5-0.5b", epochs=6.0)], [], "full", False, CPU)
    assert longer["small"].seconds == pytest.approx(2 * expected["small"].seconds)


def test_the_gpu_a_run_prefers_records_of_is_the_first_it_trains_on(monkeypatch):
    from nerbench_core import startup

    listing = ("GPU 0: NVIDIA A10 (UUID: GPU-0a1b)\nGPU 1: NVIDIA H200 (UUID: GPU-9f8e)\n"
               "  MIG 1g.18gb Device 0: (UUID: MIG-77aa)\n")
    monkeypatch.setattr(startup.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(startup.subprocess, "run", lambda *a, **k: SimpleNamespace(stdout=listing))
    startup._listed_gpus.cache_clear()
    try:
        def name(gpus=None, visible=None):
            if visible is None:
                monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
            else:
                monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
            return startup.gpu_name(SimpleNamespace(getoption=lambda option: gpus))

        assert name() == "NVIDIA A10"
        assert name(gpus="1,0") == "NVIDIA H200" and name(visible="GPU-9f8e") == "NVIDIA H200"
        assert name(visible="") is None  # the cases see no GPU: CPU records come first
        assert startup.visible_gpus() == ["0", "1"]  # the MIG line is no GPU of its own
    finally:
        startup._listed_gpus.cache_clear()


# ---------------------------------------------------------------- the xdist scheduler, with stand-in workers


class Worker:
    """What the scheduler sees of an xdist worker: what it was sent, asked back and told."""

    def __init__(self, name):
        self.gateway = SimpleNamespace(id=name)
        self.sent, self.steals, self.stopped = [], [], False

    @property
    def shutting_down(self):
        return self.stopped

    def send_runtest_some(self, indices):
        self.sent.extend(indices)

    def send_steal(self, indices):
        self.steals.append(list(indices))

    def shutdown(self):
        self.stopped = True


def scheduler(times: dict[str, float], workers: int):
    """A scheduler over ``workers`` stand-ins that collected test_ner[NAME] for each of ``times``, scheduled; its
    clock stands at 0 until a test moves it."""
    nodeids = [f"test_ner.py::test_ner[{name}]" for name in times]
    sched = ExpectedTimeScheduling(SimpleNamespace(getvalue=lambda name: ["popen"] * workers),
                                   expected=lambda nodeid: times[nodeid[nodeid.rfind("[") + 1:-1]])
    now = [0.0]
    sched.clock = lambda: now[0]
    nodes = [Worker(f"gw{i}") for i in range(workers)]
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, nodeids)
    sched.schedule()
    return sched, nodes, now, list(times)


def names(indices, order):
    return [order[i] for i in indices]


def test_each_worker_gets_its_longest_first_share_up_front():
    sched, (gw0, gw1), _, order = scheduler(SEED, 2)
    assert names(gw0.sent, order) == ["qwen1.5-14b", "qwen1.5-0.5b"]
    assert names(gw1.sent, order) == ["qwen1.5-7b", "qwen1.5-4b", "qwen1.5-1.8b", "bert-base-cased"]
    assert not gw0.stopped and not gw1.stopped and not gw0.steals and not gw1.steals


def test_a_worker_whose_share_is_one_case_is_told_to_stop_so_that_it_runs_it():
    # 3 workers: the 14B alone (234 s) against 7B + 0.5B (150 s) and 4B + 1.8B + BERT (162 s)
    sched, (gw0, gw1, gw2), _, order = scheduler(SEED, 3)
    assert names(gw0.sent, order) == ["qwen1.5-14b"]
    # an xdist worker starts a case once it holds the next one or the order to stop; taking BERT from gw2 would
    # only make gw0 end later
    assert gw0.stopped and not gw2.steals
    assert not gw1.stopped and not gw2.stopped


def test_as_expected_no_case_moves_and_each_worker_stops_at_its_last_case():
    sched, (gw0, gw1), now, order = scheduler(SEED, 2)
    index = {name: i for i, name in enumerate(order)}
    for at, node, name in ((112, gw1, "qwen1.5-7b"), (203, gw1, "qwen1.5-4b"), (234, gw0, "qwen1.5-14b")):
        now[0] = at
        sched.mark_test_complete(node, index[name])
    assert gw0.stopped and not gw1.stopped  # gw0 holds only the 0.5B; gw1's 1.8B and BERT are both started or next
    now[0] = 251
    sched.mark_test_complete(gw1, index["qwen1.5-1.8b"])
    assert gw1.stopped and not gw0.steals and not gw1.steals
    for node, name in ((gw0, "qwen1.5-0.5b"), (gw1, "bert-base-cased")):
        sched.mark_test_complete(node, index[name])
    assert sched.tests_finished


def test_a_worker_that_runs_out_early_takes_cases_another_has_not_started():
    sched, (gw0, gw1), now, order = scheduler(SEED, 2)
    index = {name: i for i, name in enumerate(order)}
    now[0] = 50  # the 14B ended long before its time (e.g. reused from its record)
    sched.mark_test_complete(gw0, index["qwen1.5-14b"])
    # gw0 holds the 0.5B (38 s); gw1 has about 62 s of the 7B left, then 4B, 1.8B, BERT queued: the last two move
    (asked,) = gw1.steals
    assert names(asked, order) == ["bert-base-cased", "qwen1.5-1.8b"] and not gw0.stopped
    sched.remove_pending_tests_from_node(gw1, asked)  # gw1 gives them back; they go to gw0, longest first
    assert names(gw0.sent, order) == ["qwen1.5-14b", "qwen1.5-0.5b", "qwen1.5-1.8b", "bert-base-cased"]
    assert names(sched.node2pending[gw1], order) == ["qwen1.5-7b", "qwen1.5-4b"]
    assert not sched.pending and not gw0.stopped


def test_a_crashed_workers_cases_go_to_the_worker_that_replaces_it():
    sched, (gw0, gw1), now, order = scheduler(SEED, 2)
    crashed = sched.remove_node(gw1)
    assert crashed.endswith("[qwen1.5-7b]")  # the case it ran (the plugin records it as failed)
    assert names(sched.pending, order) == ["qwen1.5-4b", "qwen1.5-1.8b", "bert-base-cased"]  # gw0 is busy
    gw2 = Worker("gw2")
    sched.add_node(gw2)
    sched.add_node_collection(gw2, sched.collection)
    sched.schedule()
    assert names(gw2.sent, order) == ["qwen1.5-4b", "qwen1.5-1.8b", "bert-base-cased"] and not sched.pending


# ---------------------------------------------------------------- cases already done: the work left


def session_with_one_case_done(tmp_path, monkeypatch, rerun=False):
    """A session over the seed suite whose results folder holds each case's time from an earlier run (other run keys),
    and a record of this very run of the 14B (its run key): that one is reused, not trained. Training fails the test."""
    from nerbench_core import runner
    from nerbench_core.data import load_conll_dir
    from nerbench_core.options import RunOptions
    from nerbench_core.session import Session

    dataset = load_conll_dir(make_conll_dir(tmp_path / "data"))
    options = RunOptions(cache_dir=tmp_path / "cache")
    cases = [(name, spec(name, name)) for name in SEED]
    store = ResultStore(tmp_path / "results")
    for name, seconds in SEED.items():
        store.write(earlier(name, seconds))
    done = dict(cases)["qwen1.5-14b"]
    store.write(earlier("qwen1.5-14b", 234.0, created="2026-12-02T10:00:00+00:00",
                        key=runner.key_for(runner.effective_spec(done, options), dataset, options)))

    def no_training(*args, **kwargs):
        raise AssertionError("trained a case whose record was to be reused")

    monkeypatch.setattr(runner, "run_case", no_training)
    return Session(options, tmp_path / "results", rerun=rerun), cases, dataset


def test_a_case_whose_record_will_be_reused_is_expected_to_take_no_time(tmp_path, monkeypatch):
    session, cases, dataset = session_with_one_case_done(tmp_path, monkeypatch)
    expected = session.expected_seconds(cases, CPU, dataset=dataset)
    assert expected == {**SEED, "qwen1.5-14b": 0.0}
    # what was expected to take no time is what the session reuses
    assert session.run(dict(cases)["qwen1.5-14b"], dataset).reused
    # the 14B goes last, and the split over two workers is of the work left: 150 s against 162 s, where the whole
    # suite's split would give one worker the 14B and the 0.5B (274 s) for only 38 s of work left
    jobs = longest_first(list(expected.items()))
    assert [name for name, _ in jobs][-1] == "qwen1.5-14b"
    assert lpt_partition(jobs, 2) == [["qwen1.5-7b", "qwen1.5-0.5b", "qwen1.5-14b"],
                                      ["qwen1.5-4b", "qwen1.5-1.8b", "bert-base-cased"]]
    sched, (gw0, gw1), _, order = scheduler(dict(jobs), 2)
    assert names(gw0.sent, order) == ["qwen1.5-7b", "qwen1.5-0.5b", "qwen1.5-14b"]
    assert names(gw1.sent, order) == ["qwen1.5-4b", "qwen1.5-1.8b", "bert-base-cased"]


def test_rerun_and_shards_count_a_stored_case_at_its_full_time(tmp_path, monkeypatch):
    session, cases, dataset = session_with_one_case_done(tmp_path, monkeypatch, rerun=True)
    # --rerun trains it again: its time is its record's
    assert session.expected_seconds(cases, CPU, dataset=dataset)["qwen1.5-14b"] == 234.0
    session, cases, dataset = session_with_one_case_done(tmp_path / "again", monkeypatch)
    # --shard reads no records, which hosts may not share: what a host has done changes no split
    assert (session.expected_seconds(cases, None, use_records=False, dataset=dataset)
            == session.expected_seconds(cases, None, use_records=False))
    assert session.expected_seconds(cases, None, use_records=False, dataset=dataset)["qwen1.5-14b"] > 0


# ---------------------------------------------------------------- through pytest: order, --shard, -n 2


def write_earlier(folder, times: dict[str, float]):
    """Records of an earlier quick run of each case (other run keys than this run's: nothing is reused)."""
    store = ResultStore(folder)
    for case, seconds in times.items():
        store.write(earlier(case, seconds, mode="quick", epochs=1.0, key=f"earlier{len(case)}{int(seconds)}"))


def collected(result) -> list[str]:
    return re.findall(r"test_ner\[([^\]]+)\]", result.stdout.str())


def test_records_order_the_cases_and_split_the_shards(bench):
    pytester, data, model = bench
    s = suite(pytester, "".join(f'[[model]]\nname = "{n}"\nmodel = "m"\narchitecture = "{n}"\n'
                                'quick = { epochs = 1 }\n\n'
                                for n in ("bert-base-cased", "qwen1.5-7b", "qwen1.5-0.5b", "qwen1.5-1.8b")))
    # measured: BERT took longest here (whatever its size says); the 1.8B has no record: estimated on the scale
    # of the others, about 144 s
    write_earlier(pytester.path / "results", {"bert-base-cased": 300.0, "qwen1.5-7b": 200.0, "qwen1.5-0.5b": 90.0})
    assert collected(run(pytester, data, s, "--quick", "--collect-only", "-q")) == [
        "bert-base-cased", "qwen1.5-7b", "qwen1.5-1.8b", "qwen1.5-0.5b"]
    shards = [collected(run(pytester, data, s, "--quick", "--collect-only", "-q", "--shard", f"{i}/2"))
              for i in (1, 2)]
    # shards by the estimates alone (sizes and epochs: 7B 9.0, 1.8B 3.1, 0.5B 1.8, BERT 1.4 units), never by the
    # records, which hosts may not share: disjoint, every case in one
    assert shards == [["qwen1.5-7b"], ["qwen1.5-1.8b", "qwen1.5-0.5b", "bert-base-cased"]]
    shutil.rmtree(pytester.path / "results")
    again = [collected(run(pytester, data, s, "--quick", "--collect-only", "-q", "--shard", f"{i}/2"))
             for i in (1, 2)]
    assert again == shards  # a host without those records splits the same way
    # -k first, then the split of what it selected: each shard gets one of the two
    picked = [collected(run(pytester, data, s, "--quick", "--collect-only", "-q", "-k", "bert or 7b", "--shard",
                            f"{i}/2")) for i in (1, 2)]
    assert picked == [["qwen1.5-7b"], ["bert-base-cased"]]


def table_rows(result) -> dict[str, list[str]]:
    """The summary table's rows by case, without the columns a second run cannot repeat (time, memory)."""
    lines = [line for line in result.stdout.lines if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    keep = [i for i, c in enumerate(header) if c not in ("train s", "peak mem")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not set(cells[0]) <= {"-"}:
            rows[cells[0]] = [cells[i] for i in keep]
    return rows


def new_records(folder) -> dict[str, list]:
    found: dict[str, list] = {}
    for r in ResultStore(folder).records():
        if not r.run_key.startswith("earlier"):
            found.setdefault(r.case, []).append((r.status, r.run_key, r.metrics["test"]["f1"]))
    return found


def test_n2_runs_every_case_once_by_expected_time_with_the_same_records_and_table(bench):
    pytester, data, model = bench
    times = {"tiny-long": 500.0, "tiny-a": 60.0, "tiny-b": 50.0}
    s = suite(pytester, "".join(f'[[model]]\nname = "{n}"\nmodel = "{model}"\ntrain = {TRAIN}\n\n'
                                for n in times).replace("epochs = 2", "epochs = 1"))
    for folder in ("results", "results-n"):
        write_earlier(pytester.path / folder, times)
    alone = run(pytester, data, s, "--quick")
    alone.assert_outcomes(passed=3)
    spread = run(pytester, data, s, "--quick", "-n", "2", "-v", "--results-dir", "results-n")
    spread.assert_outcomes(passed=3)
    spread.stdout.fnmatch_lines(["scheduling tests via ExpectedTimeScheduling"])
    # the split by the records' times: the long case alone on one worker, the two short ones on the other
    worker = dict((case, gw) for gw, case in re.findall(r"\[(gw\d)\][^\n]*PASSED test_ner\.py::test_ner\[([^\]]+)\]",
                                                        spread.stdout.str()))
    assert set(worker) == set(times)
    assert worker["tiny-a"] == worker["tiny-b"] != worker["tiny-long"]
    # each case ran once, and the records and the table are those of the run without -n
    by_n, by_one = new_records(pytester.path / "results-n"), new_records(pytester.path / "results")
    assert {case: len(found) for case, found in by_n.items()} == {case: 1 for case in times}
    assert by_n == by_one
    assert table_rows(spread) == table_rows(alone) and set(table_rows(alone)) == set(times)


def test_a_dist_given_keeps_xdists_scheduler(bench):
    pytester, data, model = bench
    s = suite(pytester, f'[[model]]\nname = "tiny"\nmodel = "{model}"\ntrain = {TRAIN}\n')
    result = run(pytester, data, s, "--quick", "-n", "2", "-v", "--dist", "load", "--set", "max_steps=1")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["scheduling tests via LoadScheduling"])


def test_cases_done_in_an_earlier_run_go_last_unless_rerun_and_split_no_shard(bench):
    pytester, data, model = bench
    times = {"tiny-done": 500.0, "tiny-a": 60.0, "tiny-b": 50.0}
    s = suite(pytester, "".join(f'[[model]]\nname = "{n}"\nmodel = "{model}"\ntrain = {TRAIN}\n\n'
                                for n in times).replace("epochs = 2", "epochs = 1"))
    run(pytester, data, s, "--quick", "-k", "tiny-done").assert_outcomes(passed=1)
    # it took long (as a large model would), and the others have only records of other run keys
    (path,) = (pytester.path / "results").glob("tiny-done-quick-*.json")
    record = json.loads(path.read_text())
    record["cost"]["case_seconds"] = times["tiny-done"]
    path.write_text(json.dumps(record))
    write_earlier(pytester.path / "results", {n: t for n, t in times.items() if n != "tiny-done"})
    # reused from its record: it takes no time, whatever it took then
    assert collected(run(pytester, data, s, "--quick", "--collect-only", "-q")) == ["tiny-a", "tiny-b", "tiny-done"]
    assert collected(run(pytester, data, s, "--quick", "--collect-only", "-q", "--rerun")) == [
        "tiny-done", "tiny-a", "tiny-b"]
    # shards by the estimates alone (the three the same size: in their given order), as on a host without records
    assert collected(run(pytester, data, s, "--quick", "--collect-only", "-q", "--shard", "1/2")) == [
        "tiny-done", "tiny-b"]
