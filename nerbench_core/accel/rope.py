"""Rotary position embeddings of q and k as one Triton kernel each, forward and backward (``fused_rope = true``).

Why: transformers' ``apply_rotary_pos_emb`` is a chain of elementwise operations (multiply, slice, negate,
concatenate, multiply, add) on q and k, which are transposed views of the projections' outputs, so most of them run
torch's strided kernels; with their backward they took a large share of a replayed decoder step's GPU time
(docs/PERFORMANCE.md has the profile and the kernel's own times). The kernel reads each head's two halves once and
writes the rotation in one pass (triton_kernels.rotary), in float32 and rounded once, where transformers rounds
after each operation. liger-kernel's RoPE does the same, but declares the batch size a Triton constant and so
compiles again for every batch size (accel/liger.py); this kernel takes sizes as arguments.

Where: models whose modeling module defines the standard ``apply_rotary_pos_emb`` (the two halves of each head
rotated, as Qwen2 and Llama do), checked on a small input against the formula before the lever is planned; partial
or interleaved rotations keep transformers' function. The attention modules call that function by its module-level
name, so :func:`install` swaps the name in the model's modeling module (as liger-kernel does). The swap is for the
process, so :func:`restore_all` puts transformers' functions back: before each case's plan is applied, and when the
case ends. Anything but CUDA tensors of one dtype in the usual shapes is handed to transformers' function.
"""
from __future__ import annotations

import functools
import sys

import torch
from torch import nn
from torch.autograd.function import once_differentiable

_OWN = "_nerbench_transformers_rope"  # where install keeps transformers' function on the modeling module
_swapped: list = []  # the modeling modules whose function install has swapped


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        from . import triton_kernels

        ctx.save_for_backward(cos, sin)
        return triton_kernels.rotary(x, cos, sin)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        from . import triton_kernels

        cos, sin = ctx.saved_tensors
        if grad.stride(-1) != 1:  # e.g. the gradient of k through q @ k^T (eager or SDPA's math attention)
            grad = grad.contiguous()
        return triton_kernels.rotary(grad, cos, sin, backward=True), None, None


def reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1):
    """The standard rotation, what the kernel computes: each head's halves (x1, x2) to (x1 c - x2 s, x2 c + x1 s)."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)

    def rotate(x):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    return rotate(q), rotate(k)


def modeling_module(model: nn.Module):
    """The transformers modeling module of ``model``'s own class (modeling_qwen2, modeling_llama, ...)."""
    return sys.modules.get(type(model).__module__)


def transformers_function(module):
    """The module's own ``apply_rotary_pos_emb`` (None where it has none), whether or not it is swapped now."""
    return getattr(module, _OWN, None) or getattr(module, "apply_rotary_pos_emb", None)


def unsupported(model: nn.Module) -> str | None:
    """Why the kernel cannot stand in for ``model``'s rotary embedding, or None."""
    own = transformers_function(modeling_module(model))
    config = getattr(model, "config", None)
    if own is None:
        return f"no rotary embedding ({getattr(config, 'model_type', type(model).__name__)})"
    if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        return "partial rotary embedding"
    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 5, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    cos, sin = (torch.randn(1, 5, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    try:
        theirs = own(q, k, cos, sin)
    except Exception as e:  # another signature
        return f"its apply_rotary_pos_emb takes other arguments ({type(e).__name__})"
    if not all(torch.allclose(a, b) for a, b in zip(theirs, reference(q, k, cos, sin))):
        return "its apply_rotary_pos_emb is not the standard half rotation"
    return None


def install(model: nn.Module) -> None:
    """Route the rotary embedding of ``model``'s modeling module through the kernel (once per module)."""
    module = modeling_module(model)
    if getattr(module, _OWN, None) is None:
        setattr(module, _OWN, module.apply_rotary_pos_emb)
        module.apply_rotary_pos_emb = _dispatch(module.apply_rotary_pos_emb)
        _swapped.append(module)


def restore_all() -> None:
    """Give every swapped modeling module transformers' function back."""
    while _swapped:
        module = _swapped.pop()
        module.apply_rotary_pos_emb = getattr(module, _OWN)
        delattr(module, _OWN)


def installed(model: nn.Module) -> bool:
    """Whether ``model``'s modeling module routes its rotary embedding through the kernel now."""
    return getattr(getattr(modeling_module(model), "apply_rotary_pos_emb", None), "nerbench_kernel", False)


def _dispatch(own):
    @functools.wraps(own)
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if args or kwargs or not _fits(q, k, cos, sin):
            return own(q, k, cos, sin, *args, **kwargs)
        return _Rotary.apply(q, cos, sin), _Rotary.apply(k, cos, sin)

    apply_rotary_pos_emb.nerbench_kernel = True
    return apply_rotary_pos_emb


def _fits(q, k, cos, sin) -> bool:
    """CUDA tensors of one dtype (transformers' function would promote mixed ones), cos and sin without gradients,
    q and k of one batch, each in a shape and layout the kernel takes (triton_kernels.rotary_mismatch)."""
    if not (q.is_cuda and q.dtype == k.dtype == cos.dtype == sin.dtype and not cos.requires_grad
            and not sin.requires_grad and q.dim() == k.dim() == 4 and q.shape[0] == k.shape[0]):
        return False
    from .triton_kernels import rotary_mismatch  # (CUDA: Triton is there wherever the plan installed the kernel)

    return rotary_mismatch(q, cos, sin) is None and rotary_mismatch(k, cos, sin) is None
