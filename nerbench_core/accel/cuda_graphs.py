"""Training steps replayed from CUDA graphs (``cuda_graphs = true``): one graph per batch shape, a few shapes.

Why: with the LoRA projections fused (lora_kernels.py), a decoder's step on a GPU is still bound by the host: a
Qwen1.5-7B step at 1,024 tokens launches about 6,600 kernels from Python (two matmuls and a dequantization forward,
four matmuls and a dequantization backward, for each of 224 projections; norms, attention, the loss), each
costing the host more than the GPU needs to run it (torch.profiler, docs/PERFORMANCE.md). A CUDA graph records
the launches of one forward and backward once and replays them with one call.

How:
* A graph replays fixed shapes, so training batches come in a few: :class:`BatchShapes` pads each batch's length up
  a short ladder (4, 8, ..., 32, 40, ..., 64, 80, ..., 128, then steps of 64) and its rows up to what that length
  allows (the token budget over the length, or the batch size), with rows that only see their first (pad) token
  and carry no label. The token-budget sampler cuts batches by the same padded lengths, so a batch still holds at
  most its budget; padding is 9% of the positions on CoNLL with byte-level BPE tokens (under 1% without the ladder),
  for 15 shapes (docs/ladder_padding.py). On an H100 a 7B step ran 1.7x faster, BERT's 3.5x, the 0.5B's 2.9x
  (docs/PERFORMANCE.md). Packed rows (packing.py) are padded to the token budget (:meth:`BatchShapes.packed_length`)
  and their number of sentences up to a power of two (:meth:`BatchShapes.segments`).
* The first batch of each shape trains eagerly (it is also the warm-up the capture needs); its forward and backward
  are then captured on a side stream into a graph that shares one memory pool with the others: the graphs run one
  at a time, so the memory inside a step is reused, and only each graph's inputs and loss stay apart.
* The gradients accumulate in the graph into buffers that never move: the Trainer's ``zero_grad`` lets go of
  them after each optimizer step, and :meth:`GraphedSteps.step` zeroes and hands them back before the next.
  The optimizer, gradient clipping, the learning-rate schedule and dev scoring stay outside the graphs, as ever.
* Dropout in a graph draws from CUDA's generator as it does eagerly (graph-safe Philox offsets).

* With gradient checkpointing (a card too small for the activations), the backward replays each layer's forward,
  which must draw the same dropout masks: torch saves and restores the generator's state for that, which a graph
  cannot record. There the LoRA dropout masks are keyed by a seed drawn at each step's start and the projection
  (seeded_dropout.py), checkpointing saves no random state, and the plan allows graphs only where nothing else in
  the layers draws random numbers.

Where not: without CUDA; with torch.compile
(whose own graphs would nest) and on the unsloth backend (its compiled kernels meet new shapes as it likes); with
gradient accumulation (nerbench never asks for it).
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .seeded_dropout import DropoutSeed

LADDER = ((4, 32), (8, 64), (16, 128))  # (step, up to): lengths round up to a multiple of step while <= up to
LONG_STEP = 64  # above the ladder


def bucket_length(n: int) -> int:
    """The padded length for a batch whose longest sentence has ``n`` sub-tokens."""
    for step, upto in LADDER:
        if n <= upto:
            return max(step, -(-n // step) * step)
    return -(-n // LONG_STEP) * LONG_STEP


@dataclass(frozen=True)
class BatchShapes:
    """The (rows, length) shapes training batches are padded to: one per rung of the length ladder."""

    max_rows: int  # the batch size (sentences a batch holds at most)
    max_tokens: int | None = None  # the token budget, padding included, where batches have one

    def length(self, n: int) -> int:
        return bucket_length(n)

    def packed_length(self, n: int, longest: int) -> int:
        """The length a packed row of ``n`` real positions, sentences of at most ``longest``, is padded to: the token
        budget, where batches have one (packed rows are cut under it by their real tokens, so one length serves them
        all, where the ladder gave several, each a capture of its own), or what the batch size's longest sentences
        fill, up the ladder, where that is less; up the ladder from ``n`` for a row past it (a lone sentence longer
        than the budget) or without a budget."""
        fullest = self.max_tokens and min(self.max_tokens, self.length(self.max_rows * longest))
        return fullest if fullest and n <= fullest else self.length(n)

    @staticmethod
    def segments(n: int) -> int:
        """The number of segments a packed row's starts are padded up to (accel/packing.py): a power of two, 8 at
        least. Empty segments cost the attention kernel a block each that exits at once."""
        return max(8, 1 << (n - 1).bit_length())

    def rows(self, length: int) -> int:
        return min(self.max_rows, max(1, self.max_tokens // length)) if self.max_tokens else self.max_rows

    def pad(self, batch: dict, pad_id: int) -> dict:
        """``batch`` (padded to its longest row by the collator) padded on to its shape: input ids with ``pad_id``,
        labels with -100, the attention mask with 0, except the first position of the added rows: a row that sees
        no position at all would give SDPA nothing to normalize over."""
        rows, length = batch["input_ids"].shape
        length_to = self.length(length)
        rows_to = max(rows, self.rows(length_to))
        if (rows_to, length_to) == (rows, length):
            return batch
        fill = {"input_ids": pad_id, "labels": -100, "attention_mask": 0}
        out = {}
        for key, value in batch.items():
            if key not in fill or not torch.is_tensor(value) or value.dim() != 2:
                out[key] = value
                continue
            padded = value.new_full((rows_to, length_to), fill[key])
            padded[:rows, :length] = value
            if key == "attention_mask":
                padded[rows:, 0] = 1
            out[key] = padded
        return out


def batch_shapes(train) -> BatchShapes:
    """The shapes of ``train``'s batches (a spec's TrainConfig)."""
    return BatchShapes(train.batch_size, train.max_tokens_per_batch or None)


def eager_step(loss_of, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    loss = loss_of(inputs)
    loss.backward()
    return loss.detach()


def release_random_generators() -> None:
    """After a failed capture, give the CUDA random generators a state that is not being captured any more: torch
    ends a capture's hold on them only when the capture succeeds, and the next random draw outside a graph (a
    dropout mask) would fail ("Offset increment outside graph capture"). Same seed and offset: the eager steps that
    follow draw what they would have."""
    for generator in torch.cuda.default_generators:
        generator.graphsafe_set_state(generator.clone_state())


def capture_failed(err: RuntimeError, what: str) -> str:
    """After a capture raised ``err``: why, in one line for the record; warned once, the random generators let go
    (:func:`release_random_generators`). ``what``: the lever that goes eager for the rest of the case."""
    why = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    warnings.warn(f"{what} off for the rest of this case: capture failed ({why})")
    release_random_generators()
    return why


@dataclass
class Captured:
    graph: "torch.cuda.CUDAGraph"
    inputs: dict  # the graph reads these tensors: each batch of its shape is copied in
    loss: torch.Tensor  # and writes its loss here


class GraphedSteps:
    """Forward and backward of training batches, eager for the first batch of each shape, replayed after.
    ``dropout_seed``: where the LoRA dropout is keyed by a step seed (checkpointed layers), drawn at every step's
    start, inside the graph."""

    def __init__(self, model: nn.Module, dropout_seed: DropoutSeed | None = None):
        self.dropout_seed = dropout_seed
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.grads = [torch.zeros_like(p) for p in self.params]  # at fixed addresses: the graphs write here
        self.stream = torch.cuda.Stream()
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, Captured] = {}
        self.replays = 0
        self.first_parts: dict[str, float] = {}  # seconds in each shape's first step: eager, capture, freeing
        self.failed: str | None = None  # why a capture failed: every step is eager from then on

    def _attach_grads(self) -> None:
        if self.params and self.params[0].grad is not self.grads[0]:  # zero_grad let go of them
            torch._foreach_zero_(self.grads)
            for p, g in zip(self.params, self.grads):
                p.grad = g

    def step(self, loss_of, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``loss_of(inputs)`` and its backward, the gradients added to the parameters' ``.grad``; the loss."""
        self._attach_grads()
        if self.dropout_seed is not None:
            loss_of = self._seeded(loss_of)
        if self.failed:
            return eager_step(loss_of, inputs)
        # other inputs than tensors (packed rows' length bound: a constant of the case) are recorded into the graph as
        # they are, hence part of its key (hashable; each value its own graph)
        key = tuple((k, tuple(v.shape), v.dtype) if torch.is_tensor(v) else (k, v) for k, v in inputs.items())
        captured = self.graphs.get(key)
        if captured is None:
            return self._first(key, loss_of, inputs)
        for k, v in inputs.items():
            if torch.is_tensor(v):
                captured.inputs[k].copy_(v, non_blocking=True)
        captured.graph.replay()
        self.replays += 1
        return captured.loss.detach().clone()

    def _seeded(self, loss_of):
        def seeded_loss_of(inputs):
            self.dropout_seed.draw()
            return loss_of(inputs)

        return seeded_loss_of

    def _first(self, key: tuple, loss_of, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Train on the first batch of a shape eagerly, on the stream the capture then uses (its warm-up: lazy
        initializations, Triton compilations), then record the same step into a graph: recording runs nothing,
        so the batch is trained on once."""
        static = {k: v.clone() if torch.is_tensor(v) else v for k, v in inputs.items()}
        main = torch.cuda.current_stream()
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            with self._timed("eager"):
                result = eager_step(loss_of, static)
            try:
                with self._timed("capture"):
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                        static_loss = loss_of(static)
                        static_loss.backward()
            except RuntimeError as err:
                # a model whose forward waits on the GPU (.item(), data-dependent shapes) cannot be captured: it
                # trains eagerly, and the record says why
                self.failed = capture_failed(err, "CUDA graphs")
        main.wait_stream(self.stream)
        if not self.failed:
            self.graphs[key] = Captured(graph, static, static_loss.detach())
        # the eager step's blocks, cached for the side stream, are not needed again: free them for the graphs and
        # for dev scoring
        with self._timed("freeing"):
            torch.cuda.empty_cache()
        return result

    @contextlib.contextmanager
    def _timed(self, part: str):
        """Adds the part's time to :attr:`first_parts`, the GPU's work queued before it not counted (a first step
        comes a dozen times a case: the synchronizations cost nothing to speak of)."""
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield  # a failed capture raises here: nothing is waited on, nor timed, after it
        torch.cuda.synchronize()
        self.first_parts[part] = self.first_parts.get(part, 0.0) + time.perf_counter() - t0

    @property
    def first_seconds(self) -> float:
        return sum(self.first_parts.values())

    @property
    def first_steps(self) -> int:
        """The steps trained as a shape's first (captured or not)."""
        return len(self.graphs) + (1 if self.failed else 0)

    def describe(self) -> str:
        if self.failed:
            return f"CUDA graphs failed, eager steps: {self.failed}"
        parts = ", ".join(f"{k} {v:.1f}" for k, v in self.first_parts.items())
        return f"CUDA graphs: {len(self.graphs)} batch shapes; first steps {self.first_seconds:.1f} s ({parts})"
