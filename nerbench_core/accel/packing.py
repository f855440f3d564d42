"""Training batches packed into one row, each sentence attending only to itself (``packed_sequences = true``).

Why: padded batches compute every position of a (rows x longest) block; with the CUDA graphs' shape ladder
(cuda_graphs.py) 9% of the seed decoders' positions were padding, work that trains nothing. Packed, a batch is its
sentences one after the other in a single row, positions counted again from 0 at each sentence, and attention is
computed per sentence by a variable-length kernel (torch's ``varlen_attn``, Flash Attention over cumulative
sentence starts) instead of over a padded block. The same arithmetic as the padded batch: each sentence sees the
same tokens at the same positions, causal or bidirectional as its layer is.

How:
* :func:`pack` lays the batch out: ``input_ids``, ``labels`` and ``position_ids`` of shape (1, positions), the
  sentences' cumulative starts (``SEGMENTS``, int32) and a bound on their length (``LONGEST``, the spec's
  ``max_length``, which no training sentence passes: features.py splits longer ones into windows). Under CUDA graphs
  the row is padded to the token budget (without one, up the graphs' length ladder) with filler segments (pad
  tokens, no labels, each at most ``LONGEST`` long and attending to itself), and the starts up to a power of two by
  empty segments, so that a few shapes serve every batch.
* :func:`install` registers :func:`attention` with transformers' attention interface and sets the model to it. A
  batch with ``SEGMENTS`` (training) goes through the variable-length kernel; any other (prediction) through
  transformers' own SDPA function, unchanged.
* On a CPU, or in float32 (tests), the segments go through SDPA one at a time: the reference the kernel is tested
  against.

Where not (accel.plan): without CUDA or torch's ``varlen_attn``; float32 compute or float32 weights (the kernel takes
bf16 and fp16, and q must reach it so); where the kernel's backward buffer (:func:`backward_bytes`, 128 rows a
segment) does not fit beside the activations without checkpointing; models that do not route every layer's attention
through transformers' attention interface (their layers would ignore the segments and attend across sentences), with
attention dropout (the kernel has none: bert-base-cased's 0.1), sliding windows or softcapping, or without rotary
positions (:func:`unsupported`); the generative paradigm; backends with kernels of their own. The attention function
refuses what it would leave out (a sliding window, softcapping, attention sinks) rather than drop it.
"""
from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from .cuda_graphs import BatchShapes, batch_shapes
from .memory import tokens_per_step
from .rope import modeling_module, transformers_function

ATTENTION = "nerbench_packed"  # the name registered with transformers' attention and mask interfaces
SEGMENTS = "packed_segments"  # batch key: the segments' cumulative starts, int32 (segments + 1,)
LONGEST = "packed_longest"  # batch key: an int at least the longest segment's length (the kernel's grid)


def pack(features: list[dict], pad_id: int, longest: int, shapes: BatchShapes | None = None) -> tuple[dict, int]:
    """``features`` (input_ids and labels per sentence) as one packed row; also how many positions are real.
    ``shapes`` (under CUDA graphs): the row padded up to ``shapes.packed_length`` of its real
    positions, its segments up to ``shapes.segments`` of their number; without, exactly the sentences."""
    ids, labels, positions, starts = [], [], [], [0]

    def add(token_ids: list[int], token_labels: list[int]) -> None:
        ids.extend(token_ids)
        labels.extend(token_labels)
        positions.extend(range(len(token_ids)))
        starts.append(len(ids))

    for f in features:
        if len(f["input_ids"]) > longest:
            raise ValueError(f"packed sequences: a sentence of {len(f['input_ids'])} sub-tokens, over the "
                             f"{longest} bound (max_length)")
        add(list(f["input_ids"]), list(f["labels"]))
    real = len(ids)
    filler = (shapes.packed_length(real, longest) if shapes else real) - real
    while filler > 0:
        n = min(filler, longest)
        add([pad_id] * n, [-100] * n)
        filler -= n
    if shapes is not None:
        starts += [len(ids)] * (shapes.segments(len(starts) - 1) + 1 - len(starts))
    row = {"input_ids": ids, "labels": labels, "position_ids": positions}
    batch = {k: torch.tensor([v], dtype=torch.long) for k, v in row.items()}
    batch[SEGMENTS] = torch.tensor(starts, dtype=torch.int32)
    batch[LONGEST] = longest
    return batch, real


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention function for :data:`ATTENTION`: query, key and value (batch, heads, positions,
    head_dim); returns (batch, positions, heads, head_dim). Packed batches (``SEGMENTS`` given) attend segment by
    segment, causal where the module is; others are transformers' SDPA attention as it is."""
    starts, longest = kwargs.pop(SEGMENTS, None), kwargs.pop(LONGEST, None)
    if starts is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1 or dropout:
        raise ValueError(f"packed sequences: one row without attention dropout; got {query.shape[0]} rows, "
                         f"dropout {dropout}")
    extra = [name for name in ("sliding_window", "softcap", "s_aux") if kwargs.get(name) is not None]
    if extra:  # what the kernel call below would leave out (accel.plan does not pack such models)
        raise ValueError(f"packed sequences: the attention asks for {', '.join(extra)}, which packing does not do")
    # (1, heads, positions, head_dim) -> (positions, heads, head_dim): views of the projections' layout, no copy
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    causal = getattr(module, "is_causal", True)
    run = varlen if q.is_cuda and q.dtype in KERNEL_DTYPES else reference
    return run(q, k, v, starts, longest, causal, scaling).unsqueeze(0), None


KERNEL_DTYPES = (torch.bfloat16, torch.float16)  # Flash Attention's


def varlen(q, k, v, starts, longest: int, causal: bool, scale: float | None) -> torch.Tensor:
    """torch's variable-length Flash Attention over the segments (CUDA, bf16 or fp16)."""
    from torch.nn.attention.varlen import varlen_attn

    options = {"scale": scale}
    parameters = _varlen_parameters()
    if k.shape[1] != q.shape[1]:  # grouped-query attention: each key and value head serves a group of query heads
        if "enable_gqa" in parameters:
            options["enable_gqa"] = True
        else:  # torch 2.11: the heads repeated, as transformers' repeat_kv does for SDPA
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if "window_size" in parameters:
        options["window_size"] = (-1, 0) if causal else (-1, -1)
    else:  # torch before the sliding-window argument
        options["is_causal"] = causal
    return varlen_attn(q, k, v, starts, starts, longest, longest, **options)


@functools.cache
def _varlen_parameters() -> frozenset[str]:
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def reference(q, k, v, starts, longest: int, causal: bool, scale: float | None) -> torch.Tensor:
    """The same attention, segment by segment through SDPA (CPU: tests; it reads the starts on the host)."""
    bounds = starts.tolist()
    pieces = [F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1),
                                             v[a:b].transpose(0, 1), is_causal=causal, scale=scale,
                                             enable_gqa=k.shape[1] != q.shape[1]).transpose(0, 1)
              for a, b in zip(bounds, bounds[1:]) if b > a]
    return torch.cat(pieces)


FLASH_ROWS_PER_SEGMENT = 128  # Flash Attention 2's variable-length backward: query-gradient rows a segment


def buffer_bytes(config, positions: int, segments: int) -> int:
    """Flash Attention 2's variable-length backward for a row of ``positions`` in ``segments``: a float32 accumulator
    of the query gradient, (positions + 128 x segments) x query heads x head_dim (rounded up to 32, or 64 above 128).
    On an H200 as a 12 GB card, Qwen1.5-14B's row of 512 segments asked for 1.27 GiB here and ran out of memory
    (docs/PERFORMANCE.md). Left out as small beside it: the key and value heads repeated for grouped-query attention
    (bf16, positions x query heads x head_dim each)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    multiple = 32 if head_dim <= 128 else 64
    rounded = -(-head_dim // multiple) * multiple
    return config.num_attention_heads * (positions + FLASH_ROWS_PER_SEGMENT * segments) * rounded * 4


def backward_bytes(config, train) -> int:
    """:func:`buffer_bytes` for the largest row ``train``'s batches can make: the length rows are padded to
    (:meth:`BatchShapes.packed_length`; a lone sentence over the budget up the ladder), and the most segments it can
    hold, padded to a power of two (at most the batch size plus the fillers', at most its positions: a segment has one
    at least)."""
    shapes = batch_shapes(train)
    fullest = min(tokens_per_step(train), train.batch_size * train.max_length)  # real positions a row holds at most
    # the length such rows are padded to, or a lone sentence's longer than the budget
    positions = max(shapes.packed_length(fullest, train.max_length), shapes.length(train.max_length))
    # the filler, in pieces of max_length: up to the budget, all but one position; up the ladder, under 64
    filler = positions - 1 if shapes.max_tokens else 63
    fillers = -(-filler // train.max_length)
    return buffer_bytes(config, positions, BatchShapes.segments(min(train.batch_size + fillers, positions)))


def fits(config, train, room: int | None) -> str | None:
    """Why :func:`backward_bytes` does not fit in ``room`` (what is left beside the activations and anything else the
    plan keeps, without checkpointing; None where it cannot be known), or None where it fits."""
    need = backward_bytes(config, train)
    if room is not None and need <= room:
        return None
    return f"its backward's buffer ({need / 1e9:.1f} GB) does not fit beside the activations"


def available() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def unsupported(model: nn.Module) -> str | None:
    """Why a transformers ``model`` cannot train on packed rows, or None. Packed, every layer must attend within a
    sentence through the attention function, and positions counted from 0 at each sentence must be what a padded row
    gives: rotary positions are relative, so models with them qualify; learned absolute ones are left padded (RoBERTa's
    start after the padding index)."""
    config = model.config
    if not getattr(model, "_supports_attention_backend", False):
        return f"{type(model).__name__} does not route attention through transformers' attention interface"
    if config._attn_implementation not in ("sdpa", ATTENTION):
        return f"{config._attn_implementation} attention"
    for name, value in config.to_dict().items():  # attention_dropout, attention_probs_dropout_prob, attn_pdrop, ...
        if ("attention" in name or "attn" in name) and ("dropout" in name or "pdrop" in name) and \
                isinstance(value, float) and value > 0:
            return f"{name} {value} (the kernel has no dropout)"
    if other := {t for t in (getattr(config, "layer_types", None) or ()) if t != "full_attention"}:
        return f"{', '.join(sorted(other))} layers"
    if getattr(config, "use_sliding_window", False):
        return "sliding-window attention"
    if getattr(config, "attn_logit_softcapping", None):
        return "attention softcapping"
    if transformers_function(modeling_module(model)) is None:
        return f"no rotary positions ({config.model_type})"
    return None


def install(model: nn.Module) -> None:
    """Register :func:`attention` with transformers and set ``model`` (a transformers model) to it; its masks are
    SDPA's, for the unpacked batches that still use them."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    model.set_attn_implementation(ATTENTION)
