"""pytest hooks only: options, the suite as parameters, fixtures, xdist wiring and the summary table.

The state lives in :class:`nerbench_core.session.Session`; everything here translates pytest to it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .activations import MEMORY_CAP, SHARED_BY

BASELINES = Path(__file__).resolve().parent.parent / "bench" / "baselines.json"


def pytest_addoption(parser):
    g = parser.getgroup("nerbench", "nerbench: NER fine-tuning benchmark")
    g.addoption("--data-dir", default=os.environ.get("NERBENCH_DATA_DIR"),
                help="folder with train.txt/dev.txt/test.txt (CoNLL columns); default $NERBENCH_DATA_DIR, "
                     "else CoNLL-2003 from the Hugging Face hub")
    g.addoption("--hub-dataset", default=None, help="hub dataset used when no --data-dir (default lhoestq/conll2003)")
    g.addoption("--quick", action="store_true", help="smoke run: fixed seeded sample and the specs' quick schedule")
    g.addoption("--suite", default=os.environ.get("NERBENCH_SUITE", "all"),
                help="seed, offline, all (default: every suite; cases whose model cannot be had are skipped) "
                     "or a path to a suite .toml file")
    g.addoption("--results-dir", default=os.environ.get("NERBENCH_RESULTS_DIR", "results"),
                help="where run records are stored (JSON, one per case and run key)")
    g.addoption("--cache-dir", default=os.environ.get("NERBENCH_CACHE_DIR", ".nerbench_cache"),
                help="processed datasets, dequantized GGUF checkpoints")
    g.addoption("--backend", choices=["auto", "hf", "unsloth"], default=None, help="force a backend for every case")
    g.addoption("--epochs", type=float, default=None, help="override every case's number of epochs")
    g.addoption("--set", action="append", default=[], metavar="KEY=VALUE", dest="nerbench_set",
                help="override a training field of every case, e.g. --set batch_size=64 "
                     "--set max_tokens_per_batch=4096 --set group_by_length=false (fields: specs.TrainConfig)")
    g.addoption("--rerun", action="store_true", help="run cases again even when a record for the same run key exists")
    g.addoption("--compare", nargs="?", const=str(BASELINES), default=None, metavar="BASELINES",
                help=f"compare test F1 with stored baselines (default file {BASELINES.name}); see --compare-fail")
    g.addoption("--compare-fail", type=float, default=1.5, metavar="POINTS",
                help="with --compare: fail a case whose F1 falls more than POINTS below its baseline (default 1.5)")
    g.addoption("--save-baselines", nargs="?", const=str(BASELINES), default=None, metavar="FILE",
                help="merge this run's results into the baselines file")
    g.addoption("--save-models", default=None, metavar="DIR", help="keep each fine-tuned model (or adapter + head)")
    g.addoption("--label", default="", help="a name for this run's set-up, kept in every record (report --cost)")
    g.addoption("--profile", default=None, metavar="DIR",
                help="write torch.profiler tables of training steps 4-6 (40-42 under CUDA graphs) of each case to "
                     "DIR/CASE.txt, and a cProfile of the same steps (the host's Python) to DIR/CASE.python.txt")
    g.addoption("--synthetic", action="store_true",
                help="random weights in each case's exact published architecture: cost only, no download, no floors")
    g.addoption("--gpu-peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU, for MFU")
    g.addoption("--gpu-memory", type=float, default=os.environ.get(MEMORY_CAP), metavar="GB",
                help="behave as a GPU of GB gigabytes: allocations beyond it fail and gradient_checkpointing "
                     "\"auto\" decides for that size (does a case fit a 12 GB card? --gpu-memory 12)")
    g.addoption("--gpus", default=os.environ.get("NERBENCH_GPUS"), metavar="IDS",
                help="GPUs for pytest-xdist workers, e.g. 0,1,2,3: worker gwN gets IDS[N mod len] "
                     "(default: every GPU nvidia-smi lists)")
    g.addoption("--shard", default=None, metavar="I/N",
                help="run only shard I of N (1-based) of the selected cases, for splitting a suite over hosts")


def _preload_unsloth(config) -> None:
    """unsloth patches transformers when imported and must come before it; it raises without CUDA.

    It is imported only when a case of this run asks for it: its patches would change the hf cases too.
    """
    import importlib.util

    import torch

    from .specs import SpecError, resolve_suite

    if not torch.cuda.is_available() or importlib.util.find_spec("unsloth") is None:
        return
    backend = config.getoption("--backend")
    try:
        wanted = backend == "unsloth" or (backend is None and any(
            s.backend == "unsloth" for s in resolve_suite(config.getoption("--suite"))))
    except SpecError:  # reported when the cases are collected
        wanted = False
    if wanted:
        import unsloth  # noqa: F401


def _session(config):
    return config.stash[_KEY]


_KEY = pytest.StashKey()


def _pin_worker_gpu(config) -> None:
    """Give each xdist worker its own GPU, before anything initializes CUDA in this process."""
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker is None:
        return
    ids = config.getoption("--gpus") or os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = ids.split(",") if ids else _visible_gpus()
    gpu = worker_gpu(worker, gpus)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        # gradient_checkpointing = "auto" counts only its share of a GPU that several workers use
        count = int(config.workerinput.get("workercount", 1))
        os.environ[SHARED_BY] = str(sum(worker_gpu(f"gw{i}", gpus) == gpu for i in range(count)))


def worker_gpu(worker: str, gpus: list[str]) -> str | None:
    """Worker gwN gets the N-th GPU of the list, round robin (more workers than GPUs share them)."""
    gpus = [g.strip() for g in gpus if g.strip()]
    return gpus[int(worker.removeprefix("gw")) % len(gpus)] if gpus else None


def _visible_gpus() -> list[str]:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout  # does not touch CUDA here
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def pytest_configure(config):
    _pin_worker_gpu(config)
    # Variable-shape batches fragment the caching allocator: growable segments keep reserved memory near what
    # is allocated (read when CUDA first allocates; a user's own setting wins).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if config.getoption("--gpu-memory"):
        os.environ[MEMORY_CAP] = str(config.getoption("--gpu-memory"))
    _preload_unsloth(config)
    from .runner import RunOptions
    from .records import CODE_DIR, Baselines, git_commit
    from .session import Session
    from .specs import SpecError, parse_override

    git_commit(CODE_DIR)  # the code's commit as this run starts: records carry it, whatever happens later

    config.addinivalue_line("markers", "bench: a benchmark case (fine-tunes a model)")
    config.addinivalue_line("markers", "encoder: encoder model case")
    config.addinivalue_line("markers", "decoder: decoder model case")
    opt = config.getoption
    overrides = {k: v for k, v in {"backend": opt("--backend"), "epochs": opt("--epochs")}.items() if v is not None}
    try:
        overrides.update(parse_override(text) for text in opt("nerbench_set"))
    except SpecError as err:
        raise pytest.UsageError(str(err)) from None
    if opt("--compare") and not Path(opt("--compare")).is_file():
        raise pytest.UsageError(f"--compare {opt('--compare')}: baselines file not found (--save-baselines writes one)")
    cache = Path(opt("--cache-dir")).resolve()
    options = RunOptions(cache_dir=cache, work_dir=cache / "trainer", quick=opt("--quick"),
                         synthetic=opt("--synthetic"), gpu_peak_tflops=opt("--gpu-peak-tflops"),
                         save_models=Path(opt("--save-models")).resolve() if opt("--save-models") else None,
                         profile_dir=Path(opt("--profile")).resolve() if opt("--profile") else None,
                         label=opt("--label"),
                         overrides=overrides)
    baselines = Baselines.load(opt("--compare"), opt("--compare-fail")) if opt("--compare") else None
    config.stash[_KEY] = Session(options, Path(opt("--results-dir")).resolve(), rerun=opt("--rerun"),
                                 baselines=baselines)


def pytest_generate_tests(metafunc):
    if "spec" not in metafunc.fixturenames:
        return
    from .specs import resolve_suite

    try:
        specs = resolve_suite(metafunc.config.getoption("--suite"))
    except ValueError as err:
        raise pytest.UsageError(str(err)) from None
    metafunc.parametrize("spec", [pytest.param(s, id=s.name, marks=[pytest.mark.bench, getattr(pytest.mark, s.family)])
                                  for s in specs])


def pytest_collection_modifyitems(session, config, items):
    """Largest cases first (the run ends sooner when the long ones start early); then --shard."""
    from .synthetic import estimated_parameters

    def spec_of(item):
        return getattr(getattr(item, "callspec", None), "params", {}).get("spec")

    def size(item):
        return estimated_parameters(spec_of(item).architecture)

    bench = [i for i in items if spec_of(i) is not None]
    if not bench:
        return
    others = [i for i in items if i not in bench]
    bench.sort(key=size, reverse=True)
    shard = config.getoption("--shard")
    if shard:
        try:
            index, count = (int(x) for x in shard.split("/"))
            assert 1 <= index <= count
        except (ValueError, AssertionError):
            raise pytest.UsageError(f"--shard {shard!r}: expected I/N with 1 <= I <= N") from None
        keep = [item for n, item in enumerate(bench) if n % count == index - 1]
        config.hook.pytest_deselected(items=[i for i in bench if i not in keep])
        bench = keep
    items[:] = others + bench


@pytest.fixture(scope="session")
def nerbench(request):
    """The benchmark session (options, store, records)."""
    return _session(request.config)


@pytest.fixture(scope="session")
def ner_dataset(request):
    """The dataset, validated and cached once on disk (file-locked across xdist workers); sampled under --quick."""
    from .data import DEFAULT_HUB_DATASET, ConllFormatError, SampleSize, load_cached, sample

    opt = request.config.getoption
    session = _session(request.config)
    try:
        dataset = load_cached(opt("--data-dir"), session.options.cache_dir, opt("--hub-dataset") or DEFAULT_HUB_DATASET)
    except ConllFormatError:
        raise
    except Exception as err:
        if opt("--data-dir"):  # local files that cannot be read are an error, not a reason to skip
            raise
        # hub unreachable and nothing cached
        pytest.skip(f"dataset unavailable: {type(err).__name__}: {str(err).splitlines()[0][:200]} "
                    "(use --data-dir or NERBENCH_DATA_DIR for local files)")
    return sample(dataset, SampleSize()) if opt("--quick") else dataset


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker hands its records to the controller
        # execnet carries only plain types: send the records as one JSON text
        workeroutput["nerbench_records"] = json.dumps([r.to_dict() for r in _session(session.config).records],
                                                      default=str)
    path = session.config.getoption("--save-baselines")
    if path and workeroutput is None:
        _session(session.config).save_baselines(path)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    from .records import RunRecord

    records = json.loads(getattr(node, "workeroutput", {}).get("nerbench_records", "[]"))
    _session(node.config).records.extend(RunRecord.from_dict(d) for d in records)


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem, report, sched):
    """An xdist worker died in a case (killed, segfault, out of host memory): record the case as failed."""
    _session(sched.config).record_crash(crashitem, str(report.longrepr).strip().splitlines()[-1][:200])


def pytest_terminal_summary(terminalreporter, config):
    if hasattr(config, "workerinput"):
        return
    session = _session(config)
    if not session.records:
        return
    from .table import render

    baselines = session.baselines.for_records(session.records) if session.baselines is not None else None
    terminalreporter.section("nerbench results")
    terminalreporter.write_line(render(session.records, baselines))
    terminalreporter.write_line(f"records: {session.store.folder}")
