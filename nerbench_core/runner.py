"""One case, top to bottom: spec -> model -> speed plan -> features -> Trainer -> dev selection -> test, once -> record.

This is the only training path; every model, method, paradigm, attention mode and backend goes through it.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from transformers import set_seed

from . import cost
from .accel import plan as accel_plan
from .accel.memory import DeviceMemory
from .backends.base import Built, build, save_case
from .data import NerDataset
from .options import RunOptions
from .prediction.tasks import task_for
from .reporting import environment
from .reporting.predictions import SplitPredictions
from .reporting.records import RunRecord, run_key
from .scoring import f1 as dev_f1, score
from .specs import ModelSpec
from .training.recipe import train


@dataclass
class CaseResult:
    record: RunRecord
    predictions: dict[str, SplitPredictions]  # test, and dev at the kept epoch: saved beside the record


def run_case(spec: ModelSpec, dataset: NerDataset, opts: RunOptions,
             report: Callable[[dict], None] | None = None) -> CaseResult:
    """Train and score one case (``spec`` as it runs: effective_spec's, seeded); ``report`` takes progress events."""
    set_seed(spec.train.seed)
    memory = DeviceMemory(opts.gpu_memory_gb, opts.gpu_shared_by)
    memory.apply_cap()
    held_at_start = cost.reset_peak_memory()
    t0 = time.perf_counter()

    # 1. model and tokenizer, as the spec says (random weights in its exact architecture under --synthetic)
    if report:
        report({"event": "load", "model": spec.model if not opts.synthetic else f"random {spec.architecture}"})
    built = build(synthetic(spec) if opts.synthetic else spec, dataset.labels, opts)
    load_seconds = time.perf_counter() - t0
    if report:
        report({"event": "loaded", "seconds": load_seconds})
    laps: dict[str, float] = {}  # seconds of the case's parts that no other clock times
    try:
        # 2. the speed levers, decided in one place, then installed
        with timed(laps, "prepare_seconds"):
            accel = accel_plan.plan(spec, built, memory)
            accel_plan.apply(accel, spec, built)

            # 3. words -> model inputs (labels on first sub-tokens, or prompts and targets), long sentences in windows
            decoder = accel_plan.decoder(accel, spec, memory)
            task = task_for(spec, built, dataset, decoder, memory)

        def evaluate_dev(model) -> dict:  # "predictions": kept by the dev selection for the kept epoch
            dev = task.predict(model, "dev")
            return {"f1": dev_f1(task.gold("dev"), dev.tags), "predictions": dev}

        # 4. the Trainer trains; dev picks the epoch. Full-data LoRA cases checkpoint every epoch (adapter, head and
        # their optimizer state are small): a run killed in a long case continues from its last epoch. Full
        # fine-tunes would write the whole model each time, and quick runs are over in minutes.
        checkpoints = (built.backend.name == "hf" and spec.method != "full" and not opts.quick
                       and not spec.train.max_steps)
        select_on_dev = dataset.entities("dev") > 0
        if not select_on_dev:
            warnings.warn(f"{spec.name}: the dev split has no entities: dev F1 is undefined, the last epoch is kept")
        work = work_dir(spec, dataset, opts)
        outcome = train(built.model, built.tokenizer, spec, accel, task.train_split, evaluate_dev, work,
                        checkpoints=checkpoints, select_on_dev=select_on_dev, report=report,
                        report_to=opts.report_to,
                        profile=opts.profile_dir / f"{spec.name}.txt" if opts.profile_dir else None)

        # 5. test, scored once, with the weights of the kept epoch
        test = task.predict(built.model, "test")
        if not dataset.entities("test"):
            warnings.warn(f"{spec.name}: the test split has no entities: test F1 is undefined")
        with timed(laps, "scoring_seconds"):
            test_metrics = score(task.gold("test"), test.tags, docs=[s.doc for s in dataset["test"]])
        if test.parse is not None:
            test_metrics["parse"] = test.parse
        if opts.save_models:
            with timed(laps, "save_seconds"):
                save_case(built, spec, dataset.labels, opts.save_models / spec.name)

        # 6. the kept epoch's dev predictions (predicted again, with its weights, where a resumed run scored that epoch
        # before the interruption: then F1 may differ from its dev_history entry by the kernels' nondeterminism),
        # scored in full
        dev_predictions = outcome.best_predictions or task.predict(built.model, "dev")
        with timed(laps, "scoring_seconds"):
            dev_best = score(task.gold("dev"), dev_predictions.tags, interval=False)

        # 7. the record
        measured = measure(built, spec, task, outcome, test, load_seconds, opts)
        measured.update(laps, **cost.peak_memory(), gpu_allocated_at_start_gib=held_at_start,
                        resumed_from=outcome.resumed_from, gpu_memory_cap_bytes=memory.cap_bytes,
                        case_seconds=time.perf_counter() - t0)  # build, encoding, training, scoring, checkpoints
        levers = accel.facts()
        if outcome.cuda_graphs:
            planned = levers["cuda_graphs"]["detail"]  # e.g. checkpointed layers with seeded dropout
            levers["cuda_graphs"]["detail"] = f"{outcome.cuda_graphs}; {planned}" if planned else outcome.cuda_graphs
        if decoder is not None:
            levers["graphed_generation"]["detail"] = decoder.describe()
        built.details["accel"] = levers
        best = outcome.best
        record = new_record(
            spec, dataset, opts, status="passed",
            metrics={"test": test_metrics, "dev_best": dev_best, "best_epoch": best.get("epoch"),
                     "selection": outcome.selection, "dev_history": outcome.dev_history,
                     "loss_curve": outcome.loss_curve},
            cost=measured, model=built.details)
        predictions = {"test": task.saved(test, "test"), "dev": task.saved(dev_predictions, "dev")}
        return CaseResult(judge(record), predictions)
    finally:
        accel_plan.restore()
        release(built)


@contextlib.contextmanager
def timed(laps: dict[str, float], key: str):
    """Adds the seconds the block takes to ``laps[key]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        laps[key] = laps.get(key, 0.0) + time.perf_counter() - t0


def effective_spec(spec: ModelSpec, opts: RunOptions) -> ModelSpec:
    return spec.for_run(opts.quick, **opts.overrides)


def synthetic(spec: ModelSpec) -> ModelSpec:
    from .backends.synthetic import synthetic_spec

    return synthetic_spec(spec)


def key_for(spec: ModelSpec, dataset: NerDataset, opts: RunOptions) -> str:
    """A run's identity. A --label (an experiment's name) and a --gpu-memory cap (which changes what "auto" decides)
    make other runs than the plain one, whose key stays what it always was."""
    setup = "".join(f"|{k}={v}" for k, v in (("label", opts.label), ("gpu_memory_gb", opts.gpu_memory_gb)) if v)
    return run_key(spec.hash() + setup, dataset.fingerprint, spec.train.seed, opts.mode, opts.synthetic)


def work_dir(spec: ModelSpec, dataset: NerDataset, opts: RunOptions) -> Path:
    """The Trainer's checkpoints of a case in progress (what a killed run continues from)."""
    return opts.work_dir / key_for(spec, dataset, opts)


def floor_of(spec: ModelSpec, dataset: NerDataset, opts: RunOptions) -> tuple[float | None, str]:
    """The F1 floor a run of ``spec`` on ``dataset`` is held to now, or None and why there is none."""
    return (None, "synthetic: no floor") if opts.synthetic else spec.floor_for(opts.quick, dataset.identity)


def new_record(spec: ModelSpec, dataset: NerDataset, opts: RunOptions, status: str, **fields) -> RunRecord:
    identity = dataset.identity
    floor, note = floor_of(spec, dataset, opts)
    return RunRecord(
        case=spec.name, status=status, run_key=key_for(spec, dataset, opts), mode=opts.mode,
        spec=spec.to_dict(), spec_hash=spec.hash(),
        config_key=run_key(spec.hash(seed=False), dataset.fingerprint, None, opts.mode, opts.synthetic),
        dataset={"name": identity.name, "source": dataset.source, "fingerprint": dataset.fingerprint,
                 "full_fingerprint": dataset.full_fingerprint, "sample": dataset.sample, "sentences": dataset.sizes,
                 "entities": {k: dataset.entities(k) for k in dataset.splits},
                 "documents": {k: dataset.documents(k) for k in dataset.splits}},
        seed=spec.train.seed, floor=floor, floor_note=note, synthetic=opts.synthetic, label=opts.label,
        environment=environment.describe(cost.gpu_info()),
        **fields,
    )


def judge(record: RunRecord) -> RunRecord:
    """A finished record passed or failed against its floor (none: passed; an undefined F1 under a floor: failed)."""
    if record.status in ("passed", "failed") and record.error is None:
        below = record.floor is not None and (record.f1 is None or record.f1 < record.floor)
        record.status = "failed" if below else "passed"
    return record


def measure(built: Built, spec: ModelSpec, task, outcome, test, load_seconds: float, opts: RunOptions) -> dict:
    layers, hidden = cost.model_shape(built.model)
    n_train = task.train_split
    mean_len = n_train.n_tokens / max(1, len(n_train.examples))
    fpt = cost.flops_per_token(cost.non_embedding_parameters(built.model), spec.method, layers, hidden, mean_len)
    gpu = cost.gpu_info()
    peak = cost.gpu_peak_flops(gpu["name"] if gpu else None, opts.gpu_peak_tflops)
    return {
        "load_seconds": load_seconds,
        "train_seconds": outcome.seconds,
        "train_steps": outcome.steps,
        "train_real_tokens": outcome.real_tokens,
        "train_tokens_per_second": outcome.tokens_per_second,
        "train_tokens_per_second_steady": outcome.steady_tokens_per_second,
        "padding_fraction": outcome.padding_fraction,
        "dev_eval_seconds": sum(h["seconds"] for h in outcome.dev_history),
        "checkpoint_seconds": outcome.checkpoint_seconds,  # not in train_seconds
        "trainer_setup_seconds": outcome.setup_seconds,  # the Trainer built, batches planned; not in train_seconds
        **({"graph_first_steps_seconds": outcome.first_steps_seconds}  # in train_seconds
           if outcome.first_steps_seconds is not None else {}),
        "test_eval_seconds": test.seconds,
        "test_sentences_per_second": test.sentences_per_second,
        **({"test_generated_tokens_per_second": test.generated_tokens_per_second}
           if test.generated_tokens_per_second is not None else {}),
        "flops_per_token": fpt,
        "achieved_tflops": fpt * outcome.tokens_per_second / 1e12,
        "mfu": fpt * outcome.tokens_per_second / peak if peak else None,
        "gpu_peak_flops": peak,
        "windowed_words": task.windowed_words,
        "truncated_subtokens": task.truncated_subtokens,
        "max_length": spec.train.max_length,
    }


def release(built) -> None:
    """Free the model before the next case (GPU memory above all)."""
    built.model = None
    cost.release_memory()
