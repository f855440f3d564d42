"""Greedy generation with its decoding steps replayed from CUDA graphs (``graphed_generation = true``): the answers
the generative paradigm scores on dev (every epoch) and test.

Why: transformers' ``generate`` launches every decoding step from Python, as the training steps were before
cuda_graphs.py: for a decoder with LoRA on each projection, thousands of kernels a step, each costing the host more
than the GPU needs to run it at the batch sizes generation uses. The library's own road to graphs is
``torch.compile`` over a static cache (mode "reduce-overhead"): it compiles again for every cache length and batch
size, and meets the fused LoRA function and bitsandbytes' operators; the eager forward recorded whole, as the
training steps are, needs neither.

How, for the prompts of one split:

* Prompts in order of their answer bound (then their length), in batches of up to
  ``eval_batch_size`` rows, fewer where the memory left would not hold their keys and values. Each batch gets
  transformers' ``StaticCache`` of its length rounded up to a multiple of 64, so that a split needs a few shapes;
  batches that fit in a shape share its cache and graph, and a shape's cache and graph are let go when the next
  shape begins (the lengths mostly grow).
* The prompts are read eagerly (prefill). Their common beginning (the chat template and the instruction: most of a
  prompt's tokens) is read once, for one row, and its keys and values copied to every row; the rest of each prompt
  follows, padded on the left, at the positions it has in the whole prompt. The mask is explicit (4-D): a key is
  seen where it holds a token (not padding) at or before the query, and every query sees itself, so that a padding
  position stays finite (it is never seen by a token).
* Each decoding step (the token before fed in at its position, the mask now seeing its slot, the next token the
  argmax of the logits) is recorded once per shape, after an eager first step (the capture's warm-up), and
  replayed. The token, position and mask are updated between steps, outside the graph.
* A batch ends when every row has written EOS or reached its own bound, looked at after every step: a wait on the
  GPU, but with the step one replay the host has little else to queue, and a step not taken saves far more.

The same tokens as ``generate``'s greedy search (tests/test_graphed_generation.py: on CPU the same steps eagerly,
on a GPU replayed). Graphs live for one split: the LoRA weights change between dev passes, and the memory goes
back to training.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..features import left_padded
from .cuda_graphs import capture_failed, release_random_generators
from .memory import DeviceMemory

LENGTH_STEP = 64  # cache lengths round up to a multiple of this: few shapes, little attention over empty slots
CACHE_SHARE = 0.5  # of the memory left, what the keys and values may take: the rest for the prefill's activations


def cache_length(n: int) -> int:
    return -(-n // LENGTH_STEP) * LENGTH_STEP


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Keys and values of one token in every layer."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype.itemsize


def common_prefix(prompts: Sequence[list[int]]) -> int:
    """How many first tokens all prompts share, leaving each at least its last token (whose logits start the
    answer)."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        while n and p[:n] != first[:n]:
            n -= 1
    return max(n, 0)


def static_cache(config, length: int):
    """transformers' ``StaticCache`` of ``length`` slots, storing a layer's values in its keys' dtype.

    ``StaticLayer`` allocates both in the dtype of the first keys; under autocast over float32 weights the keys come
    out of the rotary embedding in float32 and the values in the autocast dtype (attention casts both to one dtype
    again, so nothing changes numerically). A subclass rather than a wrapped method on each layer: a layer holding a
    function that holds the layer is a reference cycle, and its memory would wait for the garbage collector."""
    from transformers import StaticCache

    class Cache(StaticCache):
        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            return super().update(key_states, value_states.to(key_states.dtype), layer_idx, *args, **kwargs)

    return Cache(config=config, max_cache_len=length)


class Shape:
    """One (rows, cache length): its static cache, the tensors its decoding step reads and writes, and the step's
    graph once recorded."""

    def __init__(self, config, rows: int, length: int, device: torch.device):
        self.rows, self.length = rows, length
        self.cache = static_cache(config, length)
        self.mask = torch.zeros(rows, 1, 1, length, dtype=torch.bool, device=device)  # keys each row's query sees
        self.tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)  # fed in
        self.positions = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.next = torch.zeros(rows, dtype=torch.long, device=device)  # written by the step
        self.graph: torch.cuda.CUDAGraph | None = None

    def restart(self, prefix_cache=None) -> None:
        """Empty the cache for the next batch (its slots are overwritten; the mask hides what is left); with
        ``prefix_cache`` (a one-row cache of the prompts' common beginning), start every row with its keys and
        values."""
        for i, layer in enumerate(self.cache.layers):
            if prefix_cache is None:
                if layer.is_initialized:
                    layer.cumulative_length.zero_()
                continue
            prefix = prefix_cache.layers[i]
            keys = prefix.keys.expand(self.rows, -1, -1, -1)
            values = prefix.values.to(keys.dtype).expand(self.rows, -1, -1, -1)
            if not layer.is_initialized:
                layer.lazy_initialization(keys, values)
            n = keys.shape[2]
            layer.keys[:, :, :n].copy_(keys)
            layer.values[:, :, :n].copy_(values)
            layer.cumulative_length.fill_(n)

    def step(self, model) -> None:
        logits = model(input_ids=self.tokens, attention_mask=self.mask, position_ids=self.positions,
                       past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits
        self.next.copy_(logits[:, -1].argmax(-1))


@dataclass
class GraphedGreedy:
    """Greedy decoding of a split's prompts (see the module's docstring); ``graphs`` false runs the same steps
    eagerly (CPU, and the equivalence tests)."""

    max_rows: int  # the spec's eval_batch_size
    memory: DeviceMemory = field(default_factory=DeviceMemory)
    graphs: bool = True
    shapes_seen: set = field(default_factory=set)
    replays: int = 0
    failed: str | None = None  # why a capture failed: every step is eager from then on
    seconds: dict = field(default_factory=lambda: dict.fromkeys(("prompts", "first steps", "steps"), 0.0))
    # one stream for every shape's capture: cuBLAS keeps two workspaces for each stream it has run on, so a new stream
    # a shape would add 64 MiB a shape (up to the 32 streams torch pools) to the case's peak
    side: object = field(default=None, repr=False)

    def __call__(self, model, prompts: Sequence[list[int]], bounds: Sequence[int], eos: int, pad: int
                 ) -> list[list[int]]:
        """The tokens each prompt is followed by, up to its EOS or bound (and possibly beyond, until its batch
        ends)."""
        model = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft's layers are inside
        device = next(model.parameters()).device
        # by answer bound, then prompt length: a batch of random weights (no EOS) runs to its longest bound
        order = sorted(range(len(prompts)), key=lambda i: (bounds[i], len(prompts[i])))
        out: list[list[int]] = [[] for _ in prompts]
        shape: Shape | None = None
        rows_cap, start = self.max_rows, 0
        while start < len(order):
            batch = self.next_batch(model.config, prompts, bounds, order, start, rows_cap)
            width = max(len(prompts[i]) for i in batch)
            limit = max(bounds[i] for i in batch)
            key = (len(batch), cache_length(width + limit))
            try:
                if shape is None or shape.rows != key[0] or shape.length < key[1]:  # a longer cache serves too
                    shape = None  # the last shape's cache and graph go before the next's are made
                    shape = Shape(model.config, *key, device)
                    self.shapes_seen.add(key)
                rows = self.batch(model, shape, [prompts[i] for i in batch], [bounds[i] for i in batch], eos, pad)
            except torch.OutOfMemoryError:
                if len(batch) == 1:
                    raise
                shape, rows_cap = None, len(batch) // 2  # the memory estimate was short: half the rows, again
                torch.cuda.empty_cache()
                continue
            for i, row in zip(batch, rows):
                out[i] = row
            start += len(batch)
        return out

    def next_batch(self, config, prompts, bounds, order: list[int], start: int, rows_cap: int) -> list[int]:
        """The next prompts in order, as many as the memory holds keys and values for at their cache length."""
        rows = rows_cap
        while True:
            batch = order[start: start + rows]
            length = cache_length(max(len(prompts[i]) for i in batch) + max(bounds[i] for i in batch))
            fits = self.rows_that_fit(config, length)
            if fits >= len(batch):
                return batch
            rows = max(1, fits)

    def rows_that_fit(self, config, length: int) -> int:
        free = self.memory.reusable_bytes()
        if free is None or not torch.cuda.is_available():
            return self.max_rows
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.float32
        return max(1, int(free * CACHE_SHARE) // (length * kv_bytes_per_token(config, dtype)))

    def batch(self, model, shape: Shape, prompts: list[list[int]], bounds: list[int], eos: int, pad: int
              ) -> list[list[int]]:
        """Read the prompts (their common beginning once), then decode until every row has ended."""
        device = shape.mask.device
        clock = Clock(device)
        shared = common_prefix(prompts)
        prefix_cache = self.read_prefix(model, prompts[0][:shared], device) if shared else None
        shape.restart(prefix_cache)
        ids, attention = (t.to(device) for t in left_padded([p[shared:] for p in prompts], pad))
        width, limit = shared + ids.shape[1], max(bounds)
        seen = shape.mask[:, 0, 0]  # (rows, length): the keys the decoding step's query sees
        seen.zero_()
        seen[:, :shared] = True
        seen[:, shared:width] = attention.bool()
        positions = shared + (attention.cumsum(-1) - 1).clamp(min=0)
        query = torch.arange(shared, width, device=device)[:, None]
        keys = torch.arange(shape.length, device=device)
        prompt_mask = (seen[:, None, None, :] & (keys <= query)) | (keys == query)
        logits = model(input_ids=ids, attention_mask=prompt_mask, position_ids=positions,
                       past_key_values=shape.cache, use_cache=True, logits_to_keep=1).logits
        generated = torch.empty(len(prompts), limit, dtype=torch.long, device=device)
        generated[:, 0] = logits[:, -1].argmax(-1)
        ends = torch.tensor(bounds, device=device)
        done = (generated[:, 0] == eos) | (ends <= 1)
        shape.tokens.copy_(generated[:, :1])
        shape.positions.copy_(positions[:, -1:] + 1)
        self.seconds["prompts"] += clock.lap()
        steps = 1
        while steps < limit:
            seen[:, width + steps - 1] = True  # the slot the fed token's key and value go to
            first = shape.graph is None
            self.step(model, shape)
            if first:
                self.seconds["first steps"] += clock.lap()
            generated[:, steps] = shape.next
            done |= (shape.next == eos) | (ends <= steps + 1)
            shape.tokens.copy_(shape.next[:, None])
            shape.positions += 1
            steps += 1
            if bool(done.all()):
                break
        rows = generated[:, :steps].tolist()
        self.seconds["steps"] += clock.lap()
        return rows

    @staticmethod
    def read_prefix(model, prefix: list[int], device: torch.device):
        """The keys and values of the prompts' common beginning, read for one row."""
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([prefix], device=device), use_cache=True, past_key_values=cache,
              logits_to_keep=1)
        return cache

    def step(self, model, shape: Shape) -> None:
        if not self.graphs or self.failed:
            return shape.step(model)
        if shape.graph is not None:
            shape.graph.replay()
            self.replays += 1
            return None
        return self.first_step(model, shape)

    def first_step(self, model, shape: Shape) -> None:
        """The shape's first step eagerly on the capture's stream (its warm-up), then recorded into its graph
        (recording runs nothing, so the step is taken once)."""
        if self.side is None:
            self.side = torch.cuda.Stream()
        main, side = torch.cuda.current_stream(), self.side
        side.wait_stream(main)
        with torch.cuda.stream(side):
            shape.step(model)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, stream=side):
                    shape.step(model)
                shape.graph = graph
            except torch.OutOfMemoryError:  # the batch is decoded again, in fewer rows (__call__)
                release_random_generators()
                raise
            except RuntimeError as err:  # a forward that waits on the GPU: eager from here, the record says why
                self.failed = capture_failed(err, "graphed generation")
        main.wait_stream(side)

    def describe(self) -> str:
        times = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        if self.failed:
            return f"capture failed, eager steps: {self.failed}; {times}"
        rows = max((r for r, _ in self.shapes_seen), default=0)
        return f"{len(self.shapes_seen)} shapes, up to {rows} rows, {self.replays} steps replayed; {times}"


class Clock:
    """Seconds between laps, the device's queued work included (a wait on the GPU at each lap)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.last = time.perf_counter()

    def lap(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds
