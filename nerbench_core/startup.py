"""What a run is asked to do, read once where it starts (the pytest plugin calls these before any case): the options
into RunOptions, one GPU per process, and every check that can fail before a model loads, each with one message
naming the option or file (StartupError; the plugin turns it into pytest's usage error, exit code 4).

No pytest here: ``config`` is duck-typed (``getoption``, ``args``, ``option``, ``workerinput``).
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

UNAVAILABLE = "nerbench: cannot run here: "  # the skip reason of a case whose model or data cannot be had


class StartupError(ValueError):
    """A run that cannot start as asked; the message names the option or file and what is wrong."""


def is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def uses_xdist(config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not is_worker(config)


def bench_requested(config) -> bool:
    """Whether this run names benchmark cases (bench/ or a bench test file), not only the project's own tests."""
    for arg in config.args:
        path = Path(arg.split("::")[0])
        if path.name.startswith("test_ner") or (path.is_dir() and any(path.glob("test_ner*.py"))):
            return True
    return False


def worker_gpu(worker: str, gpus: list[str]) -> str | None:
    """Worker gwN gets the N-th GPU of the list, round robin (more workers than GPUs share them)."""
    gpus = [g.strip() for g in gpus if g.strip()]
    return gpus[int(worker.removeprefix("gw")) % len(gpus)] if gpus else None


def visible_gpus() -> list[str]:
    return [index for index, _, _ in _listed_gpus()]


def gpu_name(config) -> str | None:
    """The name of the GPU this run's cases train on (the first of --gpus, else of CUDA_VISIBLE_DEVICES, else GPU 0),
    as their records name it; None without one. Asked of nvidia-smi: an xdist controller starts no CUDA."""
    given = config.getoption("--gpus")
    ids = given if given else os.environ.get("CUDA_VISIBLE_DEVICES")
    if ids is not None and not ids.strip():  # CUDA_VISIBLE_DEVICES="": the cases see no GPU
        return None
    names = {key: name for index, name, uuid in _listed_gpus() for key in (index, uuid)}
    return names.get(ids.split(",")[0].strip() if ids else "0")


@functools.cache
def _listed_gpus() -> tuple[tuple[str, str, str], ...]:
    """(index, name, UUID) of each GPU ``nvidia-smi -L`` lists ("GPU 0: NVIDIA H200 (UUID: GPU-...)"), none without
    nvidia-smi. Asking it does not touch CUDA in this process."""
    if not shutil.which("nvidia-smi"):
        return ()
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return tuple((index, name.strip(), uuid.strip())
                 for index, name, uuid in re.findall(r"^GPU (\d+): (.+?) \(UUID: ([^)]+)\)", out, flags=re.MULTILINE))


def pin_gpu(config) -> int:
    """One process, one GPU, chosen before anything initializes CUDA here: an xdist worker gets its own (round
    robin), a single process the first of --gpus (without this the Trainer wraps the model in DataParallel over
    every visible GPU, which the token-classification losses do not support). Returns how many workers share it."""
    given = config.getoption("--gpus")
    if given and not all(GPU_ID.match(g.strip()) for g in given.split(",")):
        raise StartupError(f"--gpus {given!r}: expected GPU indices or UUIDs separated by commas, e.g. 0,1")
    present = visible_gpus() if given else []
    missing = [g for g in (given or "").split(",") if g.strip().isdigit() and present and g.strip() not in present]
    if missing:
        raise StartupError(f"--gpus {given!r}: no GPU {', '.join(missing)} here (nvidia-smi lists {', '.join(present)})")
    ids = given or os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g.strip() for g in ids.split(",") if g.strip()] if ids else visible_gpus()
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker is None:
        if (given or len(gpus) > 1) and gpus and not uses_xdist(config):
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
        return 1
    gpu = worker_gpu(worker, gpus)
    if gpu is None:
        return 1
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    count = int(config.workerinput.get("workercount", 1))
    return sum(worker_gpu(f"gw{i}", gpus) == gpu for i in range(count))


GPU_ID = re.compile(r"^(\d+|(GPU|MIG)-[\w-]+)$")  # as CUDA_VISIBLE_DEVICES takes them


def preload_unsloth(config) -> None:
    """unsloth patches transformers when imported and must come before it; it raises without CUDA.

    It is imported only when a case of this run asks for it: its patches would change the hf cases too.
    """
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


def run_options(config, shared_by: int):
    from .options import RunOptions
    from .specs import SpecError, parse_override

    opt = config.getoption
    overrides = {k: v for k, v in {"backend": opt("--backend"), "epochs": opt("--epochs")}.items() if v is not None}
    try:
        overrides.update(parse_override(text) for text in opt("nerbench_set"))
        if opt("--epochs") is not None:
            parse_override(f"epochs={opt('--epochs')}")
    except SpecError as err:
        raise StartupError(str(err)) from None
    if opt("--gpu-memory") is not None and not 0 < opt("--gpu-memory") < math.inf:
        raise StartupError(f"--gpu-memory {opt('--gpu-memory')}: expected a size in GB > 0")
    if not 0 <= opt("--compare-fail") < math.inf:
        raise StartupError(f"--compare-fail {opt('--compare-fail')}: expected F1 points >= 0")

    def folder(name):
        return Path(opt(name)).resolve() if opt(name) else None

    tokenizers = os.environ.get("NERBENCH_TOKENIZERS")
    return RunOptions(cache_dir=folder("--cache-dir"), quick=opt("--quick"), synthetic=opt("--synthetic"),
                      gpu_peak_tflops=opt("--gpu-peak-tflops"), gpu_memory_gb=opt("--gpu-memory"),
                      gpu_shared_by=shared_by, tokenizers_dir=Path(tokenizers) if tokenizers else None,
                      save_models=folder("--save-models"), profile_dir=folder("--profile"), label=opt("--label"),
                      report_to=opt("--report-to"), progress=config.option.verbose >= 0, overrides=overrides)


def check_before_training(config, options, selected: dict) -> None:
    """Everything that can be known wrong before a model loads, each reported once, naming the option or file;
    ``selected``: the specs of the cases -k and -m select, by name (the options are checked against those)."""
    from . import atomic
    from .reporting.baselines import Baselines, BaselinesError
    from .reporting.table import columns_for

    opt = config.getoption
    specs = list(selected.values())
    check_optimizers(specs, options)
    check_models(specs, options)
    if opt("--seeds") is not None:
        seeds_option(config)
    folders = [("--results-dir", Path(opt("--results-dir"))), ("--cache-dir", options.cache_dir)]
    folders += [(name, Path(opt(name))) for name in ("--save-models", "--profile") if opt(name)]
    for name, path in folders:
        problem = atomic.check_writable(path, name)
        if problem:
            raise StartupError(problem)
    for name in ("--compare", "--save-baselines"):
        path = opt(name)
        if path is None:
            continue
        if name == "--compare" and not Path(path).is_file():
            raise StartupError(f"--compare {path}: baselines file not found (--save-baselines writes one)")
        try:
            Baselines.load(path)
        except BaselinesError as err:
            raise StartupError(f"{name}: {err}") from None
        if name == "--save-baselines":
            problem = atomic.check_writable(Path(path).resolve().parent, name)
            if problem:
                raise StartupError(problem)
    if opt("--export"):
        if Path(opt("--export")).is_dir():
            raise StartupError(f"--export {opt('--export')}: a folder; the export is one JSON file")
        problem = atomic.check_writable(Path(opt("--export")).resolve().parent, "--export")
        if problem:
            raise StartupError(problem)
    try:
        columns_for(opt("--columns"), [])
    except ValueError as err:
        raise StartupError(str(err)) from None
    logger = opt("--report-to")
    if logger != "none" and importlib.util.find_spec(logger) is None:
        raise StartupError(f"--report-to {logger}: the {logger} package is not installed (pip install {logger})")


def check_models(specs, options) -> None:
    """What can be known of each case's model before any loads: --synthetic needs an architecture it knows; a model
    given as a local path (absolute, ./, ../ or ~) must be there (a hub id cannot be checked without the hub)."""
    from .architectures import architecture
    from .specs import SpecError

    for spec in specs:
        where = f"{spec.suite}: model {spec.name!r}"
        if options.synthetic:
            if not spec.architecture:
                raise StartupError(f"{where}: --synthetic needs `architecture` (a name in bench/architectures.toml)")
            try:
                architecture(spec.architecture)
            except SpecError as err:
                raise StartupError(f"{where}: {err}") from None
        elif spec.model.startswith(("/", "./", "../", "~")) and not Path(spec.model).expanduser().exists():
            raise StartupError(f"{where}: model {spec.model!r}: no such folder")


def check_optimizers(specs, options) -> None:
    """Each case's optimizer, as it will run (quick schedule and --set applied), is one the Trainer knows."""
    from transformers.training_args import OptimizerNames

    from .specs import SpecError

    known = {o.value for o in OptimizerNames}
    for spec in specs:
        for quick in (False, True):
            try:  # --set may make a spec invalid (e.g. attention=bidirectional for an encoder)
                name = spec.for_run(quick, **options.overrides).train.optimizer
            except SpecError as err:
                raise StartupError(f"--set: {err}") from None
            if name not in known:
                where = "--set optimizer" if options.overrides.get("optimizer") == name else (
                    f"{spec.suite}: model {spec.name!r}: {'quick.' if quick and 'optimizer' in spec.quick else 'train.'}"
                    "optimizer")
                raise StartupError(f"{where} = {name!r}: not a Trainer optimizer (known: {', '.join(sorted(known))})")


def seeds_option(config) -> tuple[int, ...] | None:
    text = config.getoption("--seeds")
    if text is None:
        return None
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise StartupError(f"--seeds {text!r}: expected a comma-separated list of integers, e.g. 42,43,44") from None
    if not seeds or len(set(seeds)) != len(seeds) or any(not 0 <= s < 2**32 for s in seeds):
        raise StartupError(f"--seeds {text!r}: expected distinct integers in [0, 2**32), e.g. 42,43,44")
    return seeds


def load_data(config, options, selected: dict):
    """The dataset, read, validated and cached once, before any case: a bad file stops the run with one message
    (file:line: what); data that cannot be had stops it too, unless --skip-unavailable. Document context (of a case in
    ``selected``, the specs -k and -m select, by name) needs document boundaries (-DOCSTART- lines): without them it
    would run across documents."""
    from .data import DEFAULT_HUB_DATASET, ConllFormatError, load_cached

    opt = config.getoption
    try:
        dataset = load_cached(opt("--data-dir"), options.cache_dir, opt("--hub-dataset") or DEFAULT_HUB_DATASET)
    except ConllFormatError as err:
        raise StartupError(f"bad data: {err}") from None
    except Exception as err:
        if opt("--data-dir"):
            raise StartupError(f"--data-dir {opt('--data-dir')}: {type(err).__name__}: {err}") from None
        reason = (f"no data: the hub dataset cannot be had ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                  "give local files with --data-dir or NERBENCH_DATA_DIR")
        if opt("--skip-unavailable"):
            return reason
        raise StartupError(reason + " (or --skip-unavailable to skip the cases)") from None
    context = [s.name for s in selected.values() if s.for_run(options.quick, **options.overrides).context_sentences]
    if context and min(dataset.documents(split) for split in dataset.splits) < 2:
        raise StartupError(f"context_sentences ({', '.join(context)}): {dataset.source} has no document boundaries "
                           "(-DOCSTART- lines), so neighbouring sentences would come from other documents")
    return dataset
