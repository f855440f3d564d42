"""One case, top to bottom: spec -> model -> features -> Trainer -> dev selection -> test, once -> record.

This is the only training path; every model, method, attention mode and backend goes through it.
"""
from __future__ import annotations

import gc
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import set_seed

from . import activations, cost, modeling, records, training
from .data import NerDataset
from .features import WordEncoder
from .inference import predict_tags
from .scoring import score
from .specs import ModelSpec


@dataclass
class RunOptions:
    cache_dir: Path
    work_dir: Path
    quick: bool = False
    synthetic: bool = False
    gpu_peak_tflops: float | None = None
    save_models: Path | None = None  # keep each fine-tuned case (adapter + head, or the whole model) here
    label: str = ""  # --label, carried by every record of the run
    profile_dir: Path | None = None  # a torch.profiler table of a few training steps per case goes here
    overrides: dict = field(default_factory=dict)  # from the command line: backend, epochs, ...

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"


def effective_spec(spec: ModelSpec, opts: RunOptions) -> ModelSpec:
    return spec.for_run(opts.quick, **opts.overrides)


def key_for(spec: ModelSpec, dataset: NerDataset, opts: RunOptions) -> str:
    return records.run_key(spec.hash(), dataset.fingerprint, spec.train.seed, opts.mode, opts.synthetic)


def new_record(spec: ModelSpec, dataset: NerDataset, opts: RunOptions, status: str, **fields) -> records.RunRecord:
    return records.RunRecord(
        case=spec.name, status=status, run_key=key_for(spec, dataset, opts), mode=opts.mode,
        spec=spec.to_dict(), spec_hash=spec.hash(),
        dataset={"source": dataset.source, "fingerprint": dataset.fingerprint, "sample": dataset.sample,
                 "sentences": {k: len(v) for k, v in dataset.splits.items()}},
        seed=spec.train.seed, floor=None if opts.synthetic else spec.floor_for(opts.quick), synthetic=opts.synthetic,
        label=opts.label,
        environment={"versions": records.versions(), "git": records.git_commit(records.CODE_DIR),
                     "machine": records.machine_info(cost.gpu_info())},
        **fields,
    )


def run_case(spec: ModelSpec, dataset: NerDataset, opts: RunOptions) -> records.RunRecord:
    spec = effective_spec(spec, opts)
    set_seed(spec.train.seed)
    activations.cap_gpu_memory()
    cost.reset_peak_memory()
    id2label = dict(enumerate(dataset.labels))
    label2id = {label: i for i, label in id2label.items()}

    # 1. model and tokenizer, as the spec says
    t0 = time.perf_counter()
    if opts.synthetic:  # same path, random weights in the spec's exact architecture
        from .synthetic import synthetic_spec

        built = modeling.build(synthetic_spec(spec), dataset.labels, opts.cache_dir)
    else:
        built = modeling.build(spec, dataset.labels, opts.cache_dir)
    load_seconds = time.perf_counter() - t0
    try:
        # 2. words -> sub-tokens, labels on first sub-tokens, long sentences in windows
        encoder = WordEncoder(built.tokenizer, spec.train.max_length)
        splits = {name: encoder.encode(dataset[name], label2id) for name in ("train", "dev", "test")}
        gold = {name: [list(s.tags) for s in dataset[name]] for name in ("dev", "test")}
        collate = training.CountingCollator(built.tokenizer).pad
        autocast = torch.bfloat16 if modeling.compute_dtype(spec) == torch.bfloat16 else None

        def predict(model, name):
            return predict_tags(model, splits[name], id2label, collate, spec.train.eval_batch_size, autocast)

        # 3. the Trainer trains; dev picks the epoch
        # Full-data LoRA cases checkpoint every epoch (adapter, head and their optimizer state are small): a run
        # killed in a long case continues from its last epoch. Full fine-tunes would write the whole model each
        # time, and quick runs are over in minutes.
        work = opts.work_dir / key_for(spec, dataset, opts)
        outcome = training.train(built.model, built.tokenizer, spec, splits["train"],
                                 lambda m: score(gold["dev"], predict(m, "dev").tags), work,
                                 checkpoints=built.backend == "hf" and spec.method != "full" and not opts.quick
                                 and not spec.train.max_steps,
                                 profile=opts.profile_dir / f"{spec.name}.txt" if opts.profile_dir else None)
        # 4. test, scored once, with the weights of the best dev epoch
        test = predict(built.model, "test")
        test_metrics = score(gold["test"], test.tags)
        if opts.save_models:
            modeling.save_case(built, spec, dataset.labels, opts.save_models / spec.name)
        measured = measure(built, spec, splits, outcome, test, load_seconds, opts)
        measured.update(cost.peak_memory(), resumed_from=outcome.resumed_from,
                        gpu_memory_cap_bytes=activations.memory_cap_bytes(),
                        case_seconds=time.perf_counter() - t0)  # build, encoding, training, dev and test scoring
        built.details.update(fused_kernels=outcome.fused_kernels, gradient_checkpointing=outcome.gradient_checkpointing,
                             cuda_graphs=outcome.cuda_graphs)
        shutil.rmtree(work, ignore_errors=True)  # the case is done: its checkpoints are not needed
        return new_record(
            spec, dataset, opts, status="passed",
            metrics={"test": test_metrics, "dev_best": outcome.best.get("metrics", {}),
                     "best_epoch": outcome.best.get("epoch"), "dev_history": outcome.dev_history,
                     "loss_curve": outcome.loss_curve},
            cost=measured, model=built.details,
        )
    finally:
        release(built)


def measure(built, spec, splits, outcome, test, load_seconds, opts) -> dict:
    layers, hidden = cost.model_shape(built.model)
    n_train = splits["train"]
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
        "test_eval_seconds": test.seconds,
        "test_sentences_per_second": test.sentences_per_second,
        "flops_per_token": fpt,
        "achieved_tflops": fpt * outcome.tokens_per_second / 1e12,
        "mfu": fpt * outcome.tokens_per_second / peak if peak else None,
        "gpu_peak_flops": peak,
        "windowed_words": {k: v.windowed_words for k, v in splits.items()},
        "truncated_subtokens": {k: v.truncated_subtokens for k, v in splits.items()},
        "max_length": spec.train.max_length,
    }


def release(built) -> None:
    """Free the model before the next case (GPU memory above all)."""
    built.model = None
    release_memory()


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
