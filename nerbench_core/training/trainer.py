"""The Hugging Face Trainer with nerbench's batches and graphed steps, and its per-step walks done once.

Where the Trainer offers a public hook, it is used (``training_step``, ``get_train_dataloader``,
``floating_point_ops``, ``Module.zero_grad`` through an instance attribute); ``_clip_grad_norm`` and
``_prepare_inputs`` are private: transformers 5.17 has no public hook for either (each override says why).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import Trainer

from ..accel.cuda_graphs import GraphedSteps
from .batching import TokenBudgetBatches


class NerTrainer(Trainer):
    """The Trainer, with token-budget batches when the spec asks for them, and the per-step walks over every
    module or parameter of the model (the FLOP count, gradient clipping, model.train()) done once instead (cProfile
    on an H100, Qwen1.5-7B QLoRA: such walks were 14% of the host's time in a step, docs/PERFORMANCE.md)."""

    def __init__(self, *args, batches: TokenBudgetBatches | None = None,
                 graphs: GraphedSteps | None = None, **kwargs):
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
        """Clip the gradients of the trained weights only: the same norm, without visiting every frozen one.
        Private in transformers 5.17, and the only place the Trainer clips: no public hook covers it."""
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
        inputs = self._prepare_inputs(inputs)  # private, but what the Trainer's own training_step calls first
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
