"""pytest hooks only: options, checks before anything trains, the suite as parameters, fixtures, xdist wiring,
live progress and the summary table.

The state lives in :class:`nerbench_core.session.Session`; everything here translates pytest to it. The environment
is read here, once, and carried on in :class:`~nerbench_core.options.RunOptions`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .startup import UNAVAILABLE, StartupError, bench_requested, is_worker, uses_xdist

BASELINES = Path(__file__).resolve().parent.parent / "bench" / "baselines.json"
_KEY = pytest.StashKey()
_DIST_GIVEN = pytest.StashKey()


@dataclass
class _Run:
    """What the hooks share beside the session: the dataset read before any case, progress, cases that could not
    run."""

    session: object  # session.Session
    dataset: object = None  # data.NerDataset, or why it cannot be had (--skip-unavailable); None on xdist workers
    progress_dir: Path | None = None  # where xdist workers write their progress lines
    tail: object = None  # progress.Tail, on the xdist controller
    unavailable: list = field(default_factory=list)  # (nodeid, reason) of cases that could not run here
    baselines_saved: Path | None = None
    expected: dict | None = None  # a case's pytest id -> its expected seconds (scheduling.py)
    selected: list | None = None  # (pytest id, spec) of the cases -k and -m select, worked out once; None on workers


def pytest_addoption(parser):
    from .backends.registry import CHOICES

    g = parser.getgroup("nerbench", "nerbench: NER fine-tuning benchmark")
    g.addoption("--data-dir", default=os.environ.get("NERBENCH_DATA_DIR"),
                help="folder with train.txt/dev.txt/test.txt (CoNLL columns); default $NERBENCH_DATA_DIR, "
                     "else CoNLL-2003 from the Hugging Face hub")
    g.addoption("--hub-dataset", default=None, help="hub dataset used when no --data-dir (default lhoestq/conll2003)")
    g.addoption("--quick", action="store_true", help="smoke run: fixed seeded sample and the specs' quick schedule")
    g.addoption("--suite", default=os.environ.get("NERBENCH_SUITE", "all"),
                help="seed, offline, all (default: every suite) or a path to a suite .toml file")
    g.addoption("--seeds", default=None, metavar="LIST",
                help="run every case once per seed, e.g. 42,43,44 (each its own test); default: the spec's seeds")
    g.addoption("--results-dir", default=os.environ.get("NERBENCH_RESULTS_DIR", "results"),
                help="where run records and predictions are stored (one JSON per case and run key)")
    g.addoption("--cache-dir", default=os.environ.get("NERBENCH_CACHE_DIR", ".nerbench_cache"),
                help="processed datasets, dequantized GGUF checkpoints, checkpoints of cases in progress")
    g.addoption("--backend", choices=CHOICES, default=None, help="force a backend for every case")
    g.addoption("--epochs", type=float, default=None, help="override every case's number of epochs")
    g.addoption("--set", action="append", default=[], metavar="KEY=VALUE", dest="nerbench_set",
                help="override a training field of every selected case, e.g. --set batch_size=64 "
                     "--set max_tokens_per_batch=4096 --set group_by_length=false (fields: specs.TrainConfig; also "
                     "paradigm, output_format, context_sentences, attention, backend, method)")
    g.addoption("--rerun", action="store_true", help="run cases again even when a record for the same run key exists")
    g.addoption("--skip-unavailable", action="store_true",
                help="skip cases whose model or data cannot be had here and exit 0 (default: such a run fails)")
    g.addoption("--compare", nargs="?", const=str(BASELINES), default=None, metavar="BASELINES",
                help=f"judge test F1 against stored baselines (default file {BASELINES.name}): below the spread of "
                     "their seeds is a regression")
    g.addoption("--compare-fail", type=float, default=1.5, metavar="POINTS",
                help="with --compare, for a case with fewer than 3 stored seeds: fail it when F1 falls more than "
                     "POINTS below them (default 1.5)")
    g.addoption("--save-baselines", nargs="?", const=str(BASELINES), default=None, metavar="FILE",
                help="merge this run's results into the baselines file")
    g.addoption("--save-models", default=None, metavar="DIR", help="keep each fine-tuned model (or adapter + head)")
    g.addoption("--label", default="", help="a name for this run's set-up, kept in every record (report --cost)")
    g.addoption("--columns", default="default", metavar="COLS",
                help="the summary table's columns: default (fits 120 characters), all, cost, time, or a "
                     "comma-separated list of column names")
    g.addoption("--per-seed", action="store_true", help="the summary table: a row per seed (default: one per case)")
    g.addoption("--export", default=None, metavar="FILE", help="write the whole run (records and table) as one JSON")
    g.addoption("--report-to", default="none", choices=["none", "tensorboard", "wandb", "mlflow"],
                help="the Trainer's loggers for every case (their packages must be installed)")
    g.addoption("--profile", default=None, metavar="DIR",
                help="write torch.profiler tables of training steps 4-6 (40-42 under CUDA graphs) of each case to "
                     "DIR/CASE.txt, and a cProfile of the same steps (the host's Python) to DIR/CASE.python.txt")
    g.addoption("--synthetic", action="store_true",
                help="random weights in each case's exact published architecture: cost only, no download, no floors")
    g.addoption("--gpu-peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU, for MFU")
    g.addoption("--gpu-memory", type=float, default=None, metavar="GB",
                help="behave as a GPU of GB gigabytes: allocations beyond it fail and gradient_checkpointing "
                     "\"auto\" decides for that size (does a case fit a 12 GB card? --gpu-memory 12)")
    g.addoption("--gpus", default=os.environ.get("NERBENCH_GPUS"), metavar="IDS",
                help="GPUs to use, e.g. 0,1,2,3: pytest-xdist worker gwN gets IDS[N mod len]; one process uses the "
                     "first (default: every GPU visible)")
    g.addoption("--shard", default=None, metavar="I/N",
                help="run only shard I of N (1-based) of the selected cases, for splitting a suite over hosts: "
                     "each shard about the same estimated time (from the models' sizes and epochs, the same on every "
                     "host)")


# ---------------------------------------------------------------- configuration, before anything trains


def _run(config) -> _Run:
    return config.stash[_KEY]


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config):
    """Notes whether --dist (or -d) was given, before xdist makes "load" the default of -n: the benchmark's own
    scheduler stands in for that default only."""
    option = config.option
    config.stash[_DIST_GIVEN] = getattr(option, "dist", "no") != "no" or bool(getattr(option, "distload", False))
    return (yield)


def _session(config):
    return _run(config).session


def pytest_configure(config):
    config.addinivalue_line("markers", "bench: a benchmark case (fine-tunes a model)")
    config.addinivalue_line("markers", "encoder: encoder model case")
    config.addinivalue_line("markers", "decoder: decoder model case")
    _UNAVAILABLE.clear()  # module lists: a second run in one process (pytester's inline runs) starts empty
    _RUNS.clear()
    try:
        config.stash[_KEY] = _start(config)
    except StartupError as err:
        raise pytest.UsageError(str(err)) from None
    _RUNS.append(config.stash[_KEY])


def _start(config) -> _Run:
    from . import startup
    from .reporting.baselines import Baselines
    from .reporting.environment import CODE_DIR, git_commit
    from .session import Session

    shared_by = startup.pin_gpu(config)  # before anything initializes CUDA in this process
    # Variable-shape batches fragment the caching allocator: growable segments keep reserved memory near what
    # is allocated (read when CUDA first allocates; a user's own setting wins).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    startup.preload_unsloth(config)
    git_commit(CODE_DIR)  # the code's commit as this run starts: records carry it, whatever happens later
    options = startup.run_options(config, shared_by)
    checked_here = startup.bench_requested(config) and not is_worker(config)  # workers: the controller checked
    selected = _selected(config, _cases(config)) if checked_here else None
    if checked_here:
        startup.check_before_training(config, options, _by_name(selected))
    opt = config.getoption
    baselines = Baselines.load(opt("--compare"), opt("--compare-fail")) if opt("--compare") else None
    session = Session(options, Path(opt("--results-dir")).resolve(), rerun=opt("--rerun"), baselines=baselines)
    session.progress = _progress_sink(config) if options.progress else None
    return _Run(session, startup.load_data(config, options, _by_name(selected)) if checked_here else None,
                selected=selected)


# ---------------------------------------------------------------- the cases


def pytest_generate_tests(metafunc):
    if "spec" not in metafunc.fixturenames:
        return
    params = [pytest.param(spec, id=case_id, marks=[pytest.mark.bench, getattr(pytest.mark, spec.family)])
              for case_id, spec in _cases(metafunc.config)]
    metafunc.parametrize("spec", params)


def _cases(config) -> list[tuple[str, object]]:
    """The suite's cases: (pytest id, spec with its seed), one per spec and seed."""
    from .specs import SpecError, resolve_suite
    from .startup import seeds_option

    try:
        specs = resolve_suite(config.getoption("--suite"))
        forced = seeds_option(config)
    except (SpecError, StartupError) as err:
        raise pytest.UsageError(str(err)) from None
    cases = []
    for spec in specs:
        seeds = forced or spec.run_seeds
        cases += [(spec.name if len(seeds) == 1 else f"{spec.name}-seed{seed}", spec.seeded(seed)) for seed in seeds]
    return cases


def _by_name(cases: list[tuple[str, object]]) -> dict:
    """The specs of ``cases`` by name: what the checks before training and the data's check read (the selected
    cases': an option may not fit a case left out, such as --set attention=bidirectional for BERT)."""
    return {spec.name: spec for _, spec in cases}


def _selected(config, cases: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """The cases this run will keep, worked out before collection: the cases named on the command line
    (``test_ner.py::test_ner[ID]``) where any are, less --deselect's, then pytest's own -k and -m expressions on each
    case's keywords (its test name, module and folder, and its marks ``bench`` and its family) and marks. Every case
    where an expression does not parse (pytest reports that itself)."""
    from _pytest.mark.expression import Expression  # pytest's -k and -m language (pytest is pinned)

    whole = [arg for arg in config.args if "::" not in arg]  # folders and files: every case of them
    named = set() if whole else _named_ids(config.args)
    dropped = _named_ids(config.getoption("deselect") or [])
    cases = [(i, s) for i, s in cases if (not named or i in named) and i not in dropped]
    try:
        keyword, marks = (Expression.compile(e) if e else None
                          for e in (config.getoption("keyword"), config.getoption("markexpr")))
    except SyntaxError:  # (pytest reports it)
        return cases

    def kept(case_id: str, spec) -> bool:
        names = (f"test_ner[{case_id}]", "test_ner.py", "bench", spec.family)
        return (keyword is None or keyword.evaluate(lambda part, **_: any(part.lower() in n.lower() for n in names))) \
            and (marks is None or marks.evaluate(lambda mark, **args: not args and mark in ("bench", spec.family)))

    return [(case_id, spec) for case_id, spec in cases if kept(case_id, spec)]


def _named_ids(node_ids) -> set[str]:
    """The case ids of node ids such as ``bench/test_ner.py::test_ner[qwen1.5-7b]``."""
    return {arg.split("::test_ner[", 1)[1].removesuffix("]") for arg in node_ids if "::test_ner[" in arg}


def _spec_of(item):
    return getattr(getattr(item, "callspec", None), "params", {}).get("spec")


@pytest.hookimpl(trylast=True)  # after -k and -m: --shard splits the cases selected
def pytest_collection_modifyitems(session, config, items):
    """Longest expected case first (the run ends sooner when the long ones start early); then --shard: this host's
    part of the longest-first split of the cases' expected time (nerbench_core/scheduling.py)."""
    from .scheduling import longest_first, lpt_partition

    bench = [i for i in items if _spec_of(i) is not None]
    shard = config.getoption("--shard")
    if not bench or (len(bench) == 1 and not shard):  # nothing to order (a distributed run's job): no records read
        return
    others = [i for i in items if i not in bench]
    expected = _expected(config)
    jobs = longest_first([(item, expected.get(item.callspec.id, 0.0)) for item in bench])
    bench = [item for item, _ in jobs]
    if shard:
        try:
            index, count = (int(x) for x in shard.split("/"))
            assert 1 <= index <= count
        except (ValueError, AssertionError):
            raise pytest.UsageError(f"--shard {shard!r}: expected I/N with 1 <= I <= N") from None
        keep = set(lpt_partition(jobs, count)[index - 1])
        config.hook.pytest_deselected(items=[i for i in bench if i not in keep])
        bench = [i for i in bench if i in keep]
    items[:] = others + bench


def _expected(config) -> dict[str, float]:
    """Each case's expected seconds, by its pytest id. An xdist worker takes its controller's (workers must collect
    the same cases in the same order); the controller, or the only process, reckons them from the results folder."""
    run = _run(config)
    if run.expected is None:
        handed = getattr(config, "workerinput", {}).get("nerbench_expected")
        run.expected = json.loads(handed) if handed is not None else _reckon_expected(config)
    return run.expected


def _reckon_expected(config) -> dict[str, float]:
    from .data import NerDataset
    from .scheduling import CPU
    from .specs import SpecError
    from .startup import gpu_name

    # --shard: hosts may each keep a results folder of their own, and a split that read them could differ from host
    # to host (a case run twice, or never): shards are split by the estimates alone, whatever records are reused.
    # xdist workers handed no times prefer no GPU (each has one of its own).
    shard = config.getoption("--shard")
    device = None if shard or is_worker(config) else (gpu_name(config) or CPU)
    session, loaded = _session(config), _run(config).dataset
    # the data as the cases get it, whose fingerprint their run keys hold: it tells which cases will be reused
    # (none known on an xdist worker, which has not read it, nor where it cannot be had)
    dataset = session.case_dataset(loaded) if isinstance(loaded, NerDataset) else None
    try:
        cases = _run(config).selected
        return session.expected_seconds(cases if cases is not None else _selected(config, _cases(config)), device,
                                        use_records=not shard, dataset=dataset)
    except (pytest.UsageError, SpecError):  # said when the cases are collected
        return {}


@pytest.fixture(scope="session")
def nerbench(request):
    """The benchmark session (options, store, records)."""
    return _session(request.config)


@pytest.fixture(scope="session")
def ner_dataset(request):
    """The dataset, validated and cached once on disk before any case (file-locked across xdist workers);
    sampled under --quick."""
    from .startup import load_data

    dataset = _run(request.config).dataset
    if dataset is None:  # an xdist worker: the controller has read and cached it
        try:
            dataset = load_data(request.config, _session(request.config).options,
                                _by_name(_selected(request.config, _cases(request.config))))
        except StartupError as err:
            raise pytest.UsageError(str(err)) from None
    if isinstance(dataset, str):  # unavailable, and --skip-unavailable
        pytest.skip(UNAVAILABLE + dataset)
    return _session(request.config).case_dataset(dataset)


# ---------------------------------------------------------------- live progress


def _progress_sink(config):
    """A function from a case's label to its progress reporter: lines on the terminal, or a worker's file."""
    from .progress import FileSink, bar, describe

    folder = getattr(config, "workerinput", {}).get("nerbench_progress")
    if folder:
        return FileSink(Path(folder) / f"{config.workerinput['workerid']}.jsonl").for_case
    if is_worker(config):
        return None

    def for_case(case: str):
        def report(event: dict) -> None:
            terminal = config.pluginmanager.getplugin("terminalreporter")
            capture = config.pluginmanager.getplugin("capturemanager")
            if terminal is None:
                return
            line = f"nerbench {describe(case, event)}"
            with capture.global_and_fixture_disabled() if capture else _nothing():
                if event.get("event") == "step" and terminal.isatty:  # a bar, rewritten in place
                    terminal.rewrite(f"{line} {bar(event)}")
                else:
                    if terminal.isatty:
                        terminal.rewrite("")  # the bar's line, cleared
                    terminal.write_line(line)
        return report

    return for_case


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """The controller hands each xdist worker the cases' expected times and the folder its progress lines go to."""
    run = _run(node.config)
    if bench_requested(node.config):
        node.workerinput["nerbench_expected"] = json.dumps(_expected(node.config))
    if run.session.options.progress:
        run.progress_dir = run.progress_dir or Path(tempfile.mkdtemp(prefix="nerbench-progress-"))
        node.workerinput["nerbench_progress"] = str(run.progress_dir)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Benchmark cases under -n go to the workers by expected time (nerbench_core/xdist_scheduler.py); a --dist
    given decides instead, and the project's own tests keep xdist's default."""
    if config.stash.get(_DIST_GIVEN, True) or not bench_requested(config):
        return None
    from .xdist_scheduler import ExpectedTimeScheduling

    expected = _expected(config)

    def seconds(nodeid: str) -> float:  # "bench/test_ner.py::test_ner[CASE_ID]"
        return expected.get(nodeid[nodeid.rfind("[") + 1:-1], 0.0) if nodeid.endswith("]") else 0.0

    return ExpectedTimeScheduling(config, log, expected=seconds)


def pytest_sessionstart(session):
    config = session.config
    run = _run(config)
    if uses_xdist(config) and run.session.options.progress:
        from .progress import Tail, describe

        run.progress_dir = run.progress_dir or Path(tempfile.mkdtemp(prefix="nerbench-progress-"))
        terminal = config.pluginmanager.getplugin("terminalreporter")

        def emit(case: str, event: dict) -> None:
            # xdist writes each finished test's "." without ending the line: start ours on a line of its own
            # (TerminalReporter.ensure_newline does not know of those; its writer is private, hence _tw)
            if getattr(getattr(terminal, "_tw", None), "width_of_current_line", 0):
                terminal.write("\n")
            terminal.write_line(f"nerbench {describe(case, event)}")

        run.tail = Tail(run.progress_dir, emit)
        run.tail.start()


# ---------------------------------------------------------------- results


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A case that could not run here says so in its report's sections, which reach the xdist controller."""
    report = yield
    if report.skipped and call.when in ("setup", "call") and call.excinfo is not None:
        reason = str(call.excinfo.value)
        if reason.startswith(UNAVAILABLE):
            report.user_properties.append(("nerbench_unavailable", reason.removeprefix(UNAVAILABLE)))
    return report


def pytest_runtest_logreport(report):
    """The controller (or the only process) notes the cases that could not run here, for the exit status."""
    for name, value in getattr(report, "user_properties", []):
        if name == "nerbench_unavailable":
            _UNAVAILABLE.append((report.nodeid, value))


_UNAVAILABLE: list[tuple[str, str]] = []  # this process's (nodeid, reason); logreport has no config to hang it on


def pytest_sessionfinish(session):
    config = session.config
    run = _run(config)
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker hands its records to the controller
        # execnet carries only plain types: send the records as one JSON text
        records = [{**r.to_dict(), "reused": r.reused} for r in run.session.records]
        workeroutput["nerbench_records"] = json.dumps(records, default=str)
        return
    if run.tail is not None:
        run.tail.stop()
        shutil.rmtree(run.progress_dir, ignore_errors=True)
    path = config.getoption("--save-baselines")
    if path:
        from .reporting.baselines import Baselines

        run.baselines_saved = Baselines.load(path).merge(run.session.records)
    run.unavailable = list(_UNAVAILABLE)
    if run.unavailable and not config.getoption("--skip-unavailable") and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED  # a green run must mean every selected case ran
    if config.getoption("--shard") and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK  # a shard with no case of its own (fewer cases than hosts) is done


def pytest_keyboard_interrupt(excinfo):
    """Ctrl-C: say which case was cut off and that nothing was recorded for it (records are written whole or not
    at all); a long LoRA case keeps its last complete epoch and continues from it next time."""
    for run in _RUNS:
        if run.session.running:
            print(f"\nnerbench: interrupted in case {run.session.running}: nothing was recorded for it (finished "
                  "cases keep their records; a full-data LoRA case continues from its last complete epoch next time)",
                  flush=True)
        else:
            print("\nnerbench: interrupted; finished cases keep their records, nothing was recorded for any other",
                  flush=True)


_RUNS: list[_Run] = []  # this process's runs, for the interrupt hook (it is given no config)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    from .reporting.records import RunRecord

    session = _session(node.config)
    for d in json.loads(getattr(node, "workeroutput", {}).get("nerbench_records", "[]")):
        record = RunRecord.from_dict(d)
        record.folder, record.reused = str(session.store.folder), bool(d.get("reused"))
        session.records.append(record)


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem, report, sched):
    """An xdist worker died in a case (killed, segfault, out of host memory): record the case as failed."""
    _session(sched.config).record_crash(crashitem, str(report.longrepr).strip().splitlines()[-1][:200])


def pytest_terminal_summary(terminalreporter, config):
    if is_worker(config):
        return
    run = _run(config)
    tr = terminalreporter
    if run.unavailable:
        tr.section("nerbench: cases that could not run here")
        for nodeid, reason in run.unavailable:
            tr.write_line(f"{nodeid}: {reason}")
        if not config.getoption("--skip-unavailable"):
            tr.write_line("the run fails because of them; --skip-unavailable skips such cases and exits 0")
    if not run.session.records:
        return
    from .reporting.summary import summary

    text, rows = summary(run.session.records, run.session.baselines, config.getoption("--columns"),
                         per_seed=config.getoption("--per-seed"))
    tr.section("nerbench results")
    tr.write_line(text)
    tr.write_line(f"records: {run.session.store.folder}")
    if run.baselines_saved:
        tr.write_line(f"baselines: {run.baselines_saved}")
    if config.getoption("--export"):
        from .reporting.exports import export_run

        tr.write_line(f"export: {export_run(config.getoption('--export'), rows)}")
