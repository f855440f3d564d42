"""Training one case: the Hugging Face Trainer, configured from the spec and the speed plan, with callbacks that
select the best epoch on dev and measure what training cost.

Model selection: at the end of every epoch the dev split is predicted and scored; the trainable weights of the
best epoch (dev F1) are kept in host memory and put back when training ends. Only the trainable weights are copied
(LoRA and head for LoRA cases), so this is cheap for large models and needs no checkpoint on disk. The test split
is not looked at here.

The recipe (:func:`train`) comes first; its parts (the Trainer's arguments, the outcome) after it.
"""
from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from transformers import TrainingArguments

from ..accel import bnb_step
from ..accel.cuda_graphs import GraphedSteps
from ..accel.plan import AccelPlan
from ..features import EncodedSplit
from ..precision import compute_dtype
from ..specs import ModelSpec
from .batching import CountingCollator, ListDataset, steps_per_epoch, token_budget_batches
from .callbacks import (BestOnDev, CheckpointClock, LossCurve, ProfileSteps, Progress, SteadyRate,
                        last_complete_checkpoint, synchronize)
from .trainer import NerTrainer


def train(model: nn.Module, tokenizer, spec: ModelSpec, accel: AccelPlan, train_split: EncodedSplit,
          evaluate_dev: Callable[[nn.Module], dict], output_dir: Path, *, checkpoints: bool = False,
          select_on_dev: bool = True, profile: Path | None = None, report: Callable[[dict], None] | None = None,
          report_to: str = "none") -> TrainOutcome:
    """Train ``model`` on ``train_split``; the weights of the best dev epoch are in it when this returns.

    ``checkpoints``: save every epoch into ``output_dir`` and continue from the last complete one found there.
    ``select_on_dev`` false: keep the last epoch (a dev split without entities). ``report`` takes live progress
    events; ``report_to`` names the Trainer's loggers (tensorboard, wandb, mlflow, or none).
    """
    started = time.perf_counter()
    # 0. the LoRA dropout's step seed, where graphed steps recompute checkpointed layers (accel.plan.apply made it)
    seed = getattr(model, "nerbench_dropout_seed", None)
    if accel.seeded_dropout and seed is None:  # without it every step would draw the same masks
        raise RuntimeError("seeded LoRA dropout planned, but the model has no dropout seed: accel.plan.apply first")

    # 1. batches: length-sorted under a token budget where the spec sets one; packed into one row each where the plan
    # packs (cut by their real tokens), else padded (to the graphs' shapes, and cut by those)
    shapes, packed_longest = accel.batch_shapes(spec), accel.packed_longest(spec)
    collator = CountingCollator(tokenizer, shapes, packed_longest)
    dataset = ListDataset(train_split)
    batches = token_budget_batches(spec, dataset.lengths, None if packed_longest else shapes)
    graphs = GraphedSteps(model, seed) if accel.cuda_graphs.on else None  # the steps replayed, where planned

    # 2. what is watched while it trains: dev selection, the loss, the rate after warm-up, progress, the profiler
    selection = BestOnDev(evaluate_dev, collator, by_f1=select_on_dev, report=report)
    curve = LossCurve()
    steady = SteadyRate(collator)
    saving = CheckpointClock()
    # progress first: an epoch's line comes before its dev scoring's; the checkpoint's clock after dev scoring
    one_off = (lambda: (graphs.first_seconds, graphs.first_steps)) if graphs else (lambda: (0.0, 0))  # shapes' firsts
    progress = [Progress(report, collator, one_off=one_off)] if report is not None else []
    callbacks = progress + [selection, saving, curve, steady]
    if profile is not None:  # under CUDA graphs, replayed steps: by step 40 most batch shapes have been captured
        callbacks.append(ProfileSteps(profile, first=40 if accel.cuda_graphs.on else 4))

    # 3. the Trainer
    args = training_arguments(spec, accel, output_dir, steps_per_epoch(spec, dataset.lengths, batches), checkpoints,
                              report_to)
    trainer = NerTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=callbacks,
                         batches=batches, graphs=graphs)

    # 4. continue an interrupted run from its last complete epoch, or start clean
    resume = last_complete_checkpoint(output_dir) if checkpoints else None
    if resume is not None:
        selection.restore(resume)
    elif output_dir.is_dir():
        shutil.rmtree(output_dir)  # checkpoints cut off before they were complete
    earlier = len(selection.history)  # dev scorings of the interrupted run, not timed in this one

    # 5. train, timed apart from dev scoring and checkpoints
    synchronize()
    model.zero_grad = trainer.zero_trained_grads  # an instance attribute shadows Module.zero_grad while training
    t0 = time.perf_counter()
    setup_seconds = t0 - started
    try:
        unsynced = bnb_step.without_syncs() if accel.bnb_without_syncs.on else contextlib.nullcontext()
        with optimizer_overrides_scoped(), unsynced:
            result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        del model.zero_grad
    synchronize()
    end = time.perf_counter()
    pauses = selection.history[earlier:] + saving.saves  # dev scorings of this run, checkpoints
    return TrainOutcome(
        seconds=end - t0 - sum(p["seconds"] for p in pauses),
        real_tokens=collator.real_tokens,
        padding_fraction=collator.padding_fraction,
        steps=result.global_step,
        best=selection.best or {},
        best_predictions=selection.best_predictions,
        selection=selection.selection,
        dev_history=selection.history,
        loss_curve=curve.points,
        resumed_from=resume.name if resume else None,
        steady_tokens_per_second=None if resume else steady.rate(end, pauses),
        cuda_graphs=graphs.describe() if graphs else "",
        checkpoint_seconds=saving.seconds,
        first_steps_seconds=graphs.first_seconds if graphs else None,
        setup_seconds=setup_seconds,
    )


@dataclass
class TrainOutcome:
    seconds: float  # training alone: dev scoring and checkpoints are timed on their own
    real_tokens: int
    padding_fraction: float
    steps: int
    best: dict
    best_predictions: object  # the dev predictions at the kept epoch (None where it was scored before a resume)
    selection: str  # how the kept epoch was chosen
    dev_history: list[dict] = field(default_factory=list)
    loss_curve: list[dict] = field(default_factory=list)
    resumed_from: str | None = None  # the checkpoint a crashed run was continued from
    steady_tokens_per_second: float | None = None  # after the first steps (SteadyRate)
    cuda_graphs: str = ""  # how many batch shapes were captured, or why a capture failed
    checkpoint_seconds: float = 0.0  # writing the epochs' checkpoints (not in ``seconds``)
    first_steps_seconds: float | None = None  # of ``seconds``, the first step of each graphed shape and its capture
    setup_seconds: float = 0.0  # the Trainer built, batches planned, a checkpoint looked for (not in ``seconds``)

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.seconds if self.seconds > 0 else 0.0


def training_arguments(spec: ModelSpec, accel: AccelPlan, output_dir: Path, epoch_steps: int, checkpoints: bool,
                       report_to: str = "none") -> TrainingArguments:
    """``epoch_steps``: :func:`steps_per_epoch`; liger-kernel and gradient checkpointing as ``accel`` decided."""
    t = spec.train
    checkpointing = accel.gradient_checkpointing.on
    args = TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps in transformers 5
        weight_decay=t.weight_decay,
        optim=t.optimizer,
        lr_scheduler_type="linear",
        seed=t.seed,
        data_seed=t.seed,
        bf16=compute_dtype(spec) == torch.bfloat16,
        gradient_checkpointing=checkpointing,
        # graphed steps with checkpointing key the LoRA dropout by step instead (accel/seeded_dropout.py): the saving
        # of random states cannot be recorded in a graph
        gradient_checkpointing_kwargs={"use_reentrant": False, "preserve_rng_state": not accel.seeded_dropout}
        if checkpointing else None,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        eval_strategy="no",  # dev is scored by BestOnDev, with predictions mapped by index
        save_strategy="epoch" if checkpoints else "no",
        # the last two epochs: the newer one may be cut off before its selection file (last_complete_checkpoint)
        save_total_limit=2,
        # Four loss points an epoch at least, a point every 50 steps at most: each one waits for the GPU (the Trainer
        # reads the loss and gradient norm on the host), which costs a host-bound step its overlap with the GPU.
        logging_steps=max(1, min(50, epoch_steps // 4)),
        # Batches are copied to the GPU without making the host wait for the step before: the host prepares the next
        # step while the GPU runs this one (the DataLoader pins them; on CPU nothing changes).
        accelerator_config={"non_blocking": True},
        # The filter tests every step's loss for NaN on the host, which waits for the GPU to finish the step before
        # the next can be queued. Off: a non-finite loss reaches the logged mean, and LossCurve stops the run on it.
        logging_nan_inf_filter=False,
        report_to=report_to,
        disable_tqdm=True,  # progress is nerbench's own (callbacks.Progress): it also reaches the xdist controller
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_liger_kernel=accel.liger.on,
        liger_kernel_config=accel.liger_config,
    )
    # One process trains on one GPU (the plugin gives each process its own, before CUDA starts). Where CUDA started
    # before that (a conftest that imports torch), the Trainer would wrap the model in DataParallel over every visible
    # GPU, which the models' losses do not support; transformers 5.17 has no public switch for this, only _n_gpu.
    if args.n_gpu > 1:
        args._n_gpu = 1
    return args


@contextlib.contextmanager
def optimizer_overrides_scoped():
    """bitsandbytes' optimizer overrides as they were before the block. With a bitsandbytes 8-bit optimizer, the
    Trainer registers every nn.Embedding of the model with bitsandbytes' process-wide GlobalOptimManager (32-bit
    states for them), which keeps them for the rest of the process: each case's embedding table stayed allocated
    (1.45 GiB for Qwen1.5-14B), and overrides kept by parameter position could reach a later case's optimizer."""
    try:
        from bitsandbytes.optim import GlobalOptimManager
    except ImportError:
        yield
        return
    manager = GlobalOptimManager.get_instance()
    saved = (list(manager.module_weight_config_triple), dict(manager.pid2config), dict(manager.index2config),
             manager.uses_config_override)
    try:
        yield
    finally:
        (manager.module_weight_config_triple, manager.pid2config, manager.index2config,
         manager.uses_config_override) = saved
