"""The Hugging Face Trainer, configured from a spec, with callbacks that select the best epoch on dev
and measure what training cost.

Model selection: at the end of every epoch the dev split is predicted and scored; the trainable weights
of the best epoch (dev F1) are kept in host memory and put back when training ends. Only the trainable
weights are copied (LoRA and head for LoRA cases), so this is cheap for large models and needs no
checkpoint on disk. The test split is not looked at here.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from transformers import DataCollatorForTokenClassification, Trainer, TrainerCallback, TrainingArguments

from . import activations, compiling, cuda_graphs, lora_kernels
from .features import EncodedSplit
from .modeling import compute_dtype, transformers_model
from .specs import ModelSpec


class CountingCollator:
    """Pads like DataCollatorForTokenClassification (then on to one of ``shapes``, where training batches are
    replayed from CUDA graphs) and counts the real and padded positions it trains on."""

    def __init__(self, tokenizer, shapes: cuda_graphs.BatchShapes | None = None):
        self.pad = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=None, return_tensors="pt")
        self.shapes, self.pad_id = shapes, tokenizer.pad_token_id
        self.real_tokens = 0
        self.padded_tokens = 0
        self.counting = True

    def __call__(self, features: list[dict]) -> dict:
        batch = self.pad(features)
        real = int(batch["attention_mask"].sum())
        if self.shapes is not None:
            batch = self.shapes.pad(batch, self.pad_id)
        if self.counting:
            self.real_tokens += real
            self.padded_tokens += batch["attention_mask"].numel() - real
        return batch

    @property
    def padding_fraction(self) -> float:
        total = self.real_tokens + self.padded_tokens
        return self.padded_tokens / total if total else 0.0


class BestOnDev(TrainerCallback):
    """Scores dev after each epoch, keeps the best epoch's trainable weights, restores them at the end."""

    def __init__(self, evaluate: Callable[[nn.Module], dict], collator: CountingCollator):
        self.evaluate = evaluate
        self.collator = collator
        self.history: list[dict] = []
        self.best: dict | None = None
        self._best_weights: dict[str, torch.Tensor] = {}
        self._last_step = -1

    def _score(self, state, model) -> None:
        if state.global_step == self._last_step:
            return
        self._last_step = state.global_step
        self.collator.counting = False  # dev batches are not training tokens
        t0 = time.perf_counter()
        metrics = self.evaluate(model)
        self.collator.counting = True
        entry = {"epoch": round(state.epoch or 0, 3), "step": state.global_step, "dev_f1": metrics["f1"],
                 "seconds": time.perf_counter() - t0}
        self.history.append(entry)
        if self.best is None or metrics["f1"] > self.best["dev_f1"]:
            self.best = {**entry, "metrics": metrics}
            self._best_weights = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._score(state, model)

    # The selection travels with Trainer checkpoints, so a resumed case still picks its best epoch among all.
    def on_save(self, args, state, control, **kwargs):
        from safetensors.torch import save_file

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        (folder / SELECTION_FILE).write_text(json.dumps({"history": self.history, "best": self.best,
                                                         "last_step": self._last_step}, default=float))
        if self._best_weights:
            save_file({k: v.contiguous() for k, v in self._best_weights.items()}, str(folder / BEST_WEIGHTS_FILE))

    def restore(self, checkpoint: Path) -> None:
        from safetensors.torch import load_file

        saved = json.loads((checkpoint / SELECTION_FILE).read_text())
        self.history, self.best, self._last_step = saved["history"], saved["best"] or None, saved["last_step"]
        if (checkpoint / BEST_WEIGHTS_FILE).is_file():
            self._best_weights = load_file(str(checkpoint / BEST_WEIGHTS_FILE))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._score(state, model)  # a fractional last epoch ends without on_epoch_end
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self._best_weights.items():
                params[name].copy_(value.to(params[name].device))


SELECTION_FILE = "nerbench_selection.json"
BEST_WEIGHTS_FILE = "nerbench_best_trainable.safetensors"


class LossCurve(TrainerCallback):
    def __init__(self):
        self.points: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.points.append({"step": state.global_step, "epoch": round(state.epoch or 0, 3), "loss": logs["loss"]})
            if not math.isfinite(logs["loss"]):
                raise FloatingPointError(f"training loss is {logs['loss']} at step {state.global_step}")


class SteadyRate(TrainerCallback):
    """Marks the end of the first ``warmup`` steps (kernel selection, allocator growth, first compilations), so
    that throughput can also be given without them: short benchmark runs are otherwise dominated by them."""

    def __init__(self, collator: CountingCollator, warmup: int = 3):
        self.collator, self.warmup = collator, warmup
        self.mark: tuple[float, int] | None = None  # (time, real tokens so far) after the warm-up steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup and self.mark is None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.mark = (time.perf_counter(), self.collator.real_tokens)


class ProfileSteps(TrainerCallback):
    """torch.profiler and Python's cProfile over a few steps after the warm-up. The operator tables (by CUDA time,
    then by the host's own time per operator) go to ``path``; the Python functions by own time and by cumulative
    time to ``path`` with suffix ``.python.txt``: where a step's host time goes when the GPU waits on it."""

    def __init__(self, path: Path, first: int = 4, steps: int = 3):
        self.path, self.first, self.last = path, first, first + steps - 1
        self.profiler = None
        self.python = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.first and self.profiler is None:
            import cProfile

            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.profiler = profile(activities=activities)
            self.profiler.__enter__()
            self.python = cProfile.Profile()
            self.python.enable()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is not None and (state.global_step == self.last or state.global_step == state.max_steps):
            import io
            import pstats

            self.python.disable()
            self.last = state.global_step
            self.profiler.__exit__(None, None, None)
            sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
            table = self.profiler.key_averages()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(f"steps {self.first}-{self.last}\n" + table.table(sort_by=sort, row_limit=40)
                                 + "\nby the host's own time\n" + table.table(sort_by="self_cpu_time_total", row_limit=40))
            text = io.StringIO()
            stats = pstats.Stats(self.python, stream=text)
            stats.sort_stats("tottime").print_stats(40)
            stats.sort_stats("cumulative").print_stats(60)
            self.path.with_suffix(".python.txt").write_text(f"steps {self.first}-{self.last}\n" + text.getvalue())
            self.profiler = self.python = None


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, split: EncodedSplit):
        self.rows = [e.as_features() for e in split.examples]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]

    @property
    def lengths(self) -> list[int]:
        return [len(r["input_ids"]) for r in self.rows]


class TokenBudgetBatches(torch.utils.data.Sampler):
    """Batches of similar length holding at most ``max_tokens`` positions (padding included) each.

    Sentences are shuffled, taken in pools of ``pool`` batches' worth, sorted by length inside a pool and cut
    greedily under the budget; the batch order is shuffled again. Short sentences thus travel in large
    batches and long ones in small, so every step does about the same work with little padding.
    """

    def __init__(self, lengths: list[int], max_tokens: int, max_sentences: int, seed: int, pool: int = 64,
                 padded_length: Callable[[int], int] | None = None):
        self.lengths, self.max_tokens, self.max_sentences = lengths, max_tokens, max_sentences
        self.padded_length = padded_length or (lambda n: n)  # what a batch's longest row will be padded to
        self.seed, self.pool, self.epoch = seed, pool, 0
        self._batches = self._make(0)

    def _make(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.pool * self.max_sentences
        batches: list[list[int]] = []
        for start in range(0, len(order), size):
            batch: list[int] = []
            longest = 0
            for i in sorted(order[start: start + size], key=self.lengths.__getitem__):
                longest_if = max(longest, self.padded_length(self.lengths[i]))
                if batch and (longest_if * (len(batch) + 1) > self.max_tokens or len(batch) >= self.max_sentences):
                    batches.append(batch)
                    batch, longest_if = [], self.padded_length(self.lengths[i])
                batch.append(i)
                longest = longest_if
            if batch:
                batches.append(batch)
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self):
        batches, self.epoch = self._batches, self.epoch + 1
        self._batches = self._make(self.epoch)  # the next epoch's (same count within a batch or two)
        return iter(batches)


class NerTrainer(Trainer):
    """The Trainer, with token-budget batches when the spec asks for them, and the per-step walks over every
    module or parameter of the model (the FLOP count, gradient clipping, model.train()) done once instead (cProfile
    on an H100, Qwen1.5-7B QLoRA: such walks were 14% of the host's time in a step, docs/PERFORMANCE.md)."""

    def __init__(self, *args, batches: "TokenBudgetBatches | None" = None,
                 graphs: cuda_graphs.GraphedSteps | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = batches  # token_budget_batches' sampler, or None for the Trainer's own batches
        self.graphs = graphs  # where training steps are replayed from CUDA graphs
        self._flops_per_token: float | None = None
        self._trainable: list[nn.Parameter] | None = None
        self._modes_set = False

    def floating_point_ops(self, inputs: dict) -> float:
        """The Trainer's FLOP count (6 x tokens x parameters) with the parameters counted once, not every step."""
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs:
            return 0.0
        if self._flops_per_token is None:
            self._flops_per_token = float(super().floating_point_ops({main_input: torch.zeros(1, 1, dtype=torch.long)}))
        return self._flops_per_token * inputs[main_input].numel()

    def trained(self, model) -> list[nn.Parameter]:
        if self._trainable is None:
            self._trainable = [p for p in model.parameters() if p.requires_grad]
        return self._trainable

    def _clip_grad_norm(self, model):
        """Clip the gradients of the trained weights only: the same norm, without visiting every frozen one."""
        return self.accelerator.clip_grad_norm_(self.trained(model), self.args.max_grad_norm)

    def zero_trained_grads(self, set_to_none: bool = True) -> None:
        """``model.zero_grad()`` for the trained weights only (frozen ones have no gradients): the Trainer calls it
        after every step, and Module.zero_grad walks every module to find the parameters (80,000 calls on the 7B)."""
        for p in self.trained(self.model):
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.zero_()

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer's step (or its replay from a CUDA graph), without its model.train() walk over every module
        once that walk has been made and the model is still in training mode: nerbench switches modes only for the
        whole model (prediction calls eval(), the next step then walks again). The first step always walks: a fresh
        peft wrapper is in training mode around modules that from_pretrained left in eval mode."""
        if not (self._modes_set and model.training):
            model.train()
            self._modes_set = True
        if self.graphs is not None:
            return self.graphed_step(model, inputs, num_items_in_batch)
        model.train = lambda mode=True: model  # an instance attribute shadows Module.train for this step
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            del model.train

    def graphed_step(self, model, inputs, num_items_in_batch=None):
        """What the Trainer's step computes (its compute_loss, then backward), through :class:`GraphedSteps`. The
        label count that normalizes the loss is a graph input like the batch: it changes from batch to batch."""
        assert self.args.gradient_accumulation_steps == 1, "CUDA graphs: gradient accumulation is not supported"
        inputs = self._prepare_inputs(inputs)
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
            inputs["num_items_in_batch"] = torch.as_tensor(num_items_in_batch, device=inputs["input_ids"].device)

        def loss_of(batch: dict) -> torch.Tensor:
            batch = dict(batch)
            items = batch.pop("num_items_in_batch", None)
            with self.compute_loss_context_manager():
                return self.compute_loss(model, batch, num_items_in_batch=items)

        return self.graphs.step(loss_of, inputs)

    def get_train_dataloader(self):
        if self.batches is None:
            return super().get_train_dataloader()
        loader = torch.utils.data.DataLoader(self.train_dataset, batch_sampler=self.batches,
                                             collate_fn=self.data_collator,
                                             num_workers=self.args.dataloader_num_workers,
                                             pin_memory=torch.cuda.is_available())
        return self.accelerator.prepare(loader)


def liger_config(spec: ModelSpec, model: nn.Module) -> dict | None:
    """liger-kernel's fused kernels for this model, or None where they do not apply: no CUDA, no liger-kernel,
    a model type it does not know, or a model that is not a transformers model (the unsloth backend's wrapper,
    which the Trainer's liger hook would pass over).

    Compiled layers (``torch_compile``) get inductor's fused kernels instead: liger's hand-written Triton autograd
    functions inside a compiled region would be opaque to it.

    Its fused linear cross-entropy is for language-model heads: it would replace a token classifier's forward.
    Its RoPE kernel declares the batch size a compile-time constant, so Triton compiles it anew for every batch
    size it meets, and token-budget batches change size at almost every step: on an H100 that compilation was
    41% of the host's time in a Qwen1.5-0.5B step (torch.profiler, docs/PERFORMANCE.md). transformers' own RoPE
    is a few elementwise operations.
    liger also swaps transformers' module classes for the rest of the process, so a later case of the same
    model type built in that process gets its norms and MLPs even with ``fused_kernels = false``; the perf
    benchmark therefore runs each set-up in its own process.
    """
    if not (spec.train.fused_kernels and torch.cuda.is_available()) or spec.train.torch_compile:
        return None
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        return None
    base = transformers_model(model)
    if base is None or base.config.model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return None
    return {"fused_linear_cross_entropy": False, "cross_entropy": False, "rope": False}


def token_budget_batches(spec: ModelSpec, lengths: list[int],
                         shapes: cuda_graphs.BatchShapes | None = None) -> TokenBudgetBatches | None:
    """The spec's token-budget batches over training sentences of these lengths (sub-tokens), cut by the lengths
    they will be padded to (``shapes``, under CUDA graphs); None without a budget."""
    t = spec.train
    if not t.max_tokens_per_batch:
        return None
    return TokenBudgetBatches(lengths, t.max_tokens_per_batch, t.batch_size, t.seed,
                              padded_length=shapes.length if shapes else None)


def steps_per_epoch(spec: ModelSpec, lengths: list[int], batches: TokenBudgetBatches | None = None) -> int:
    """Optimizer steps in an epoch of training sentences of these lengths, as the batches will be cut (``batches``:
    token_budget_batches' answer, when already made)."""
    batches = batches or token_budget_batches(spec, lengths)
    return len(batches) if batches is not None else max(1, math.ceil(len(lengths) / spec.train.batch_size))


def training_arguments(spec: ModelSpec, output_dir: Path, epoch_steps: int, checkpoints: bool,
                       liger: dict | None, gradient_checkpointing: bool) -> TrainingArguments:
    """``epoch_steps``: :func:`steps_per_epoch`; ``liger``: liger_config's answer; ``gradient_checkpointing``:
    activations.decide's (a spec may say "auto")."""
    t = spec.train
    return TrainingArguments(
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
        gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        eval_strategy="no",  # dev is scored by BestOnDev, with predictions mapped by index
        save_strategy="epoch" if checkpoints else "no",
        save_total_limit=1,  # only the last epoch is needed to resume
        # Four loss points an epoch at least, a point every 50 steps at most: each one waits for the GPU (the Trainer
        # reads the loss and gradient norm on the host), which costs a host-bound step its overlap with the GPU.
        logging_steps=max(1, min(50, epoch_steps // 4)),
        # Batches are copied to the GPU without making the host wait for the step before: the host prepares the next
        # step while the GPU runs this one (the DataLoader pins them; on CPU nothing changes).
        accelerator_config={"non_blocking": True},
        # The filter tests every step's loss for NaN on the host, which waits for the GPU to finish the step before
        # the next can be queued. Off: a non-finite loss reaches the logged mean, and LossCurve stops the run on it.
        logging_nan_inf_filter=False,
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_liger_kernel=liger is not None,
        liger_kernel_config=liger,
    )


@dataclass
class TrainOutcome:
    seconds: float
    real_tokens: int
    padding_fraction: float
    steps: int
    best: dict
    dev_history: list[dict] = field(default_factory=list)
    loss_curve: list[dict] = field(default_factory=list)
    resumed_from: str | None = None  # the checkpoint a crashed run was continued from
    steady_tokens_per_second: float | None = None  # after the first steps (SteadyRate)
    fused_kernels: list[str] = field(default_factory=list)
    gradient_checkpointing: bool = False  # as decided for this case (the spec may say "auto")
    cuda_graphs: str = ""  # how many batch shapes were captured, or why steps ran eagerly

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.seconds if self.seconds > 0 else 0.0


def train(model: nn.Module, tokenizer, spec: ModelSpec, train_split: EncodedSplit,
          evaluate_dev: Callable[[nn.Module], dict], output_dir: Path, checkpoints: bool = False,
          profile: Path | None = None) -> TrainOutcome:
    """Train with the Trainer; with ``checkpoints``, save every epoch and continue from the last one found."""
    from transformers.trainer_utils import get_last_checkpoint

    liger = liger_config(spec, model)
    compiled = compiling.apply(spec, model)
    # before checkpointing is decided: weights kept dequantized take memory only where the step's uncheckpointed
    # activations still fit beside them (lora_kernels.keep_weights), so the decision below comes out the same
    fused_lora = lora_kernels.apply(spec, model)
    checkpointing = activations.decide(spec, model)
    graphs_off = cuda_graphs.reason_off(spec, model, checkpointing)
    graphed = graphs_off is None
    shapes = cuda_graphs.batch_shapes(spec) if graphed else None
    collator = CountingCollator(tokenizer, shapes)
    selection = BestOnDev(evaluate_dev, collator)
    curve = LossCurve()
    steady = SteadyRate(collator)
    dataset = ListDataset(train_split)
    batches = token_budget_batches(spec, dataset.lengths, shapes)
    trainer = NerTrainer(
        model=model,
        batches=batches,
        graphs=cuda_graphs.GraphedSteps(model) if graphed else None,
        args=training_arguments(spec, output_dir, steps_per_epoch(spec, dataset.lengths, batches), checkpoints, liger,
                                checkpointing),
        train_dataset=dataset,
        data_collator=collator,
        # under CUDA graphs, profile replayed steps: by step 40 most batch shapes have been met and captured
        callbacks=[selection, curve, steady] + ([ProfileSteps(profile, first=40 if graphed else 4)] if profile else []),
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    resume = get_last_checkpoint(str(output_dir)) if checkpoints and output_dir.is_dir() else None
    if resume:
        selection.restore(Path(resume))
    earlier = len(selection.history)  # dev scorings of the interrupted run, not timed in this one
    model.zero_grad = trainer.zero_trained_grads  # an instance attribute shadows Module.zero_grad while training
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        del model.zero_grad
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    end = time.perf_counter()
    dev_seconds = sum(h["seconds"] for h in selection.history[earlier:])
    seconds = end - t0 - dev_seconds  # training alone: dev scoring is timed on its own
    steady_rate = None
    if steady.mark and not resume:
        mark_time, mark_tokens = steady.mark
        later_dev = sum(h["seconds"] for h in selection.history if h["step"] > steady.warmup)
        steady_seconds = end - mark_time - later_dev
        if steady_seconds > 0 and collator.real_tokens > mark_tokens:
            steady_rate = (collator.real_tokens - mark_tokens) / steady_seconds
    return TrainOutcome(
        seconds=seconds,
        real_tokens=collator.real_tokens,
        padding_fraction=collator.padding_fraction,
        steps=result.global_step,
        best=selection.best or {},
        dev_history=selection.history,
        loss_curve=curve.points,
        resumed_from=Path(resume).name if resume else None,
        steady_tokens_per_second=steady_rate,
        fused_kernels=(["liger-kernel: rms_norm, swiglu"] if liger else []) + ([compiled] if compiled else []) + fused_lora,
        gradient_checkpointing=checkpointing,
        cuda_graphs=trainer.graphs.describe() if trainer.graphs else f"off: {graphs_off}",
    )
