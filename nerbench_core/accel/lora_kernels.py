"""LoRA on a frozen linear layer (4-bit or not) as one autograd function per projection (``fused_lora = true``).

Why: on a GPU the seed decoders' training steps are bound by the host, not the GPU (torch.profiler and cProfile,
docs/PERFORMANCE.md). For every projection (7 a layer) peft's LoRA layer runs, from Python: bitsandbytes'
Linear4bit and its autograd function (dequantize the absmax, dequantize the weight, matmul), a defensive clone,
dropout, lora_A and lora_B as modules (each with autocast's cast of its float32 weight), the scaling and the add,
and autograd records a node for each. :class:`LoraProjection` does the same arithmetic as one autograd node with a
hand-written backward: the frozen weight is dequantized once forward and once backward (as bitsandbytes does; its
block scales only once, or the whole weight only once, where memory allows, see :class:`FrozenWeight`), the scaled
LoRA product is added into the base output in place (addmm), and no clone is made.

What stays peft's: the adapter's parameters, their names, saving and loading. Only the module's ``forward`` is
replaced, and it hands back to peft's own forward whenever the plain case does not hold (adapters disabled or
merged, several active adapters, mixed-adapter batches, DoRA and other variants, trained base weights or
biases, no autocast and mixed dtypes).
"""
from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .fp8 import Fp8Weight
from .seeded_dropout import MAX_SALTS, DropoutSeed, seeded_dropout


class FrozenWeight:
    """A base layer's frozen weight (and bias) in the compute dtype, with what never changes worked out once.

    For a 4-bit weight with double quantization, bitsandbytes dequantizes the 8-bit block scales (absmax) before
    every dequantization of the weight, twice a step. They never change while the base is frozen, so with
    ``keep_scales`` they are dequantized here once and kept in float32 (4 bytes per 64 weights: 0.4 GB for
    Qwen1.5-7B), and each step calls only bitsandbytes' weight dequantization, in the compute dtype directly.

    With ``keep_weight`` (a dtype) the weight itself is dequantized once, into that dtype, and kept: the same values
    every dequantization gives, so the same arithmetic, with no dequantization left in a step (16% of a Qwen1.5-7B
    step's GPU time, docs/PERFORMANCE.md) at the memory of a 16-bit copy of the weights (:func:`keep_weights`).

    With ``fp8`` the dequantized weight is kept as float8 instead (fp8.py: two layouts, the memory of the 16-bit
    copy), and :meth:`linear` and :meth:`grad_input` run on FP8 tensor cores: not the same arithmetic.
    """

    def __init__(self, base: nn.Module, keep_scales: bool = True, keep_weight: torch.dtype | None = None,
                 fp8: bool = False):
        self.base = base
        self.quant_state = getattr(base.weight, "quant_state", None)
        self.absmax = None
        self.kept = None
        self.fp8_weight = None
        if fp8:  # (fp8_matmuls) the weight dequantized to ``keep_weight``, rounded to float8 and kept in its place
            if self.quant_state is not None and keep_weight is None:
                raise ValueError("FP8 matmuls on a 4-bit weight: give the dtype to dequantize it to (keep_weight)")
            self.fp8_weight = Fp8Weight(self.weight(keep_weight or base.weight.dtype))
            return
        if self.quant_state is not None and keep_scales:
            import bitsandbytes.functional as bnbf

            qs = self.quant_state
            absmax = bnbf.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset if qs.nested else qs.absmax
            self.absmax = absmax.float()
        if self.quant_state is not None and keep_weight is not None:
            self.kept = self.weight(keep_weight)
            self.absmax = None  # not needed any more

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The (out, in) weight matrix in ``dtype``."""
        qs = self.quant_state
        if qs is None:
            return self.base.weight.to(dtype)
        if self.kept is not None and self.kept.dtype == dtype:
            return self.kept
        if self.absmax is None:
            import bitsandbytes.functional as bnbf

            return bnbf.dequantize_4bit(self.base.weight, qs).to(dtype)
        return torch.ops.bitsandbytes.dequantize_4bit.default(self.base.weight, self.absmax, qs.blocksize,
                                                              qs.quant_type, qs.shape, dtype)

    def bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        return None if self.base.bias is None else self.base.bias.to(dtype)

    def linear(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``x W^T + b`` in ``dtype`` (``x`` in ``dtype``)."""
        if self.fp8_weight is None:
            return F.linear(x, self.weight(dtype), self.bias(dtype))
        return self.fp8_weight.linear(x, dtype, self.bias(dtype))

    def grad_input(self, g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``g W``: the input's gradient from the output's ``g`` (rows, out), in ``dtype``."""
        return torch.mm(g, self.weight(dtype)) if self.fp8_weight is None else self.fp8_weight.grad_input(g, dtype)


def frozen_shape(base: nn.Module) -> torch.Size:
    """The (out, in) shape of a base layer's weight, a 4-bit one's as its quantization state records it."""
    qs = getattr(base.weight, "quant_state", None)
    return torch.Size(qs.shape) if qs else base.weight.shape


def frozen_shapes(bases: list[nn.Module]) -> list[torch.Size]:
    return [frozen_shape(b) for b in bases]


def scales_bytes(bases: list[nn.Module]) -> int:
    """The memory of the 4-bit layers' block scales, dequantized to float32."""
    return sum(4 * b.weight.quant_state.absmax.numel() for b in bases if getattr(b.weight, "quant_state", None))


def keep_scales(bases: list[nn.Module], free_bytes: int | None) -> bool:
    """Keep the dequantized block scales where they take at most a twentieth of the memory left once the model is
    loaded: on an 80 GB GPU always (Qwen1.5-14B: 0.8 GB), not for the 14B on a 12 GB card, which it would push
    over the 10 GB it is meant to fit in (measured under --gpu-memory 12: 9.5 GiB allocated with them, 8.8 without)."""
    return free_bytes is None or scales_bytes(bases) <= free_bytes / 20


def dequantized_bytes(bases: list[nn.Module], dtype: torch.dtype) -> int:
    """The memory of the 4-bit layers' weights dequantized to ``dtype``."""
    return sum(frozen_shape(b).numel() * dtype.itemsize for b in bases if getattr(b.weight, "quant_state", None))


def keep_weights(setting: bool | str, bases: list[nn.Module], dtype: torch.dtype, room: int | None) -> bool:
    """The spec's ``keep_dequantized``: true or false as given (where there are 4-bit weights); "auto" keeps them
    where they fit in ``room``, the memory left beside the step's activations without checkpointing
    (memory.room_beside_activations), so that keeping them never turns checkpointing on (which costs more than
    dequantizing):
    on an 80 GB GPU, all the seed decoders (Qwen1.5-14B: 25.2 GB); on a 12 or 24 GB card, not the 7B and 14B."""
    need = dequantized_bytes(bases, dtype)
    if not need:
        return False
    if setting != "auto":
        return bool(setting)
    return room is not None and need <= room


_NONE = (None,) * 7  # no gradients for LoraProjection's other arguments (frozen weight, scaling, ...)


class LoraProjection(torch.autograd.Function):
    """``y = x W^T + b + s * dropout(x) A^T B^T`` with W (and b) frozen; gradients for x, A and B.

    Everything is computed in the compute dtype ``dtype`` (autocast's under the Trainer's bf16), as peft's layer
    does under autocast; the gradients of A and B come back in their own (float32) dtype.
    """

    @staticmethod
    def forward(ctx, x, lora_a, lora_b, frozen: FrozenWeight, scaling: float, dropout: float, dtype: torch.dtype,
                seed: torch.Tensor | None = None, salt: int = 0, kernel_grad: bool = False):
        x = x.to(dtype)
        a, b = lora_a.to(dtype), lora_b.to(dtype)
        out = frozen.linear(x, dtype)
        ctx.seeded = (seed, salt) if dropout and seed is not None else None
        if ctx.seeded:  # the mask a function of (seed, salt): drawn again, not kept (seeded_dropout.py)
            dropped, mask = seeded_dropout(x, dropout, seed, salt), None
        elif dropout:
            dropped, mask = torch.native_dropout(x, dropout, True)
        else:
            dropped, mask = x, None
        down = F.linear(dropped, a)  # (..., r)
        flat = out.view(-1, out.shape[-1])
        flat.addmm_(down.view(-1, down.shape[-1]), b.t(), alpha=scaling)
        ctx.save_for_backward(dropped, down, a, b, mask)
        ctx.frozen, ctx.scaling, ctx.dropout, ctx.dtype, ctx.kernel_grad = frozen, scaling, dropout, dtype, kernel_grad
        ctx.dtypes = (lora_a.dtype, lora_b.dtype)
        return out

    @staticmethod
    def backward(ctx, grad):
        dropped, down, a, b, mask = ctx.saved_tensors
        s = ctx.scaling
        g = grad.to(ctx.dtype).reshape(-1, grad.shape[-1])  # (N, out)
        down2 = down.reshape(-1, down.shape[-1])  # (N, r)
        grad_down = torch.mm(g, b).mul_(s)  # (N, r): d loss / d (dropout(x) A^T)
        grad_b = torch.mm(g.t(), down2).mul_(s).to(ctx.dtypes[1])  # (out, r)
        grad_a = torch.mm(grad_down.t(), dropped.reshape(-1, dropped.shape[-1])).to(ctx.dtypes[0])  # (r, in)
        if not ctx.needs_input_grad[0]:  # the first layer's input (frozen embeddings)
            return None, grad_a, grad_b, *_NONE
        grad_x = ctx.frozen.grad_input(g, ctx.dtype)  # (N, in)
        if not ctx.dropout:
            grad_x.addmm_(grad_down, a)
        elif ctx.kernel_grad and grad_x.is_cuda:  # product, mask and add in one pass over grad_x (fused_lora_backward)
            from . import triton_kernels

            seed, salt = ctx.seeded or (None, 0)
            triton_kernels.masked_lora_grad_(grad_x, grad_down, a, ctx.dropout, seed=seed, salt=salt, salts=MAX_SALTS,
                                             mask=None if mask is None else mask.reshape(grad_x.shape))
        elif ctx.seeded:
            grad_x.add_(seeded_dropout(torch.mm(grad_down, a), ctx.dropout, *ctx.seeded))
        else:
            grad_x.add_(torch.mm(grad_down, a).mul_(mask.reshape(grad_x.shape)), alpha=1.0 / (1.0 - ctx.dropout))
        return grad_x.view(*grad.shape[:-1], grad_x.shape[-1]), grad_a, grad_b, *_NONE


def compute_dtype_for(x: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def plain(layer: nn.Module) -> bool:
    """Whether ``layer``'s adapters are one active vanilla LoRA adapter (enabled, not merged, no variant such as DoRA,
    no bias on B): what :class:`LoraProjection` computes, whatever the input."""
    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return False
    name = layer.active_adapters[0]
    return name in layer.lora_A and name not in getattr(layer, "lora_variant", {}) and layer.lora_B[name].bias is None


def all_plain(model: nn.Module) -> bool:
    """Whether every LoRA layer of ``model`` (of any kind peft has) is fused and plain: then every LoRA dropout is
    :class:`LoraProjection`'s (what seeded dropout needs: a layer left to peft's forward would draw torch's)."""
    from peft.tuners.lora import LoraLayer

    fused = {id(layer) for layer in fused_layers(model)}
    return all(id(layer) in fused and plain(layer) for layer in model.modules() if isinstance(layer, LoraLayer))


def plain_adapter(layer: nn.Module, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
    """The one active vanilla LoRA adapter of ``layer`` when :class:`LoraProjection` computes what peft would;
    None where peft's own forward must run."""
    if args or kwargs or not plain(layer):
        return None
    name = layer.active_adapters[0]
    if getattr(layer, "nerbench_frozen", None) is None:
        return None  # not installed on this layer (install's reasons)
    if not torch.is_autocast_enabled(x.device.type) and layer.lora_A[name].weight.dtype != x.dtype:
        return None  # peft casts between dtypes here; its forward does it exactly
    return name


def fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Replaces a peft LoRA layer's forward (bound to the layer by :func:`install`)."""
    name = plain_adapter(self, x, args, kwargs)
    if name is None:
        if self.nerbench_dropout_seed and self.training and any(
                isinstance(d, nn.Dropout) and d.p > 0 for d in self.lora_dropout.values()):
            # peft's dropout draws from torch's generator, which checkpointed layers in a graph cannot draw again: the
            # gradients would be wrong (the plan allows seeded dropout only where every LoRA layer is plain)
            raise RuntimeError("seeded LoRA dropout: a LoRA layer fell back to peft's forward while training with "
                               "dropout; train with cuda_graphs = false")
        return type(self).forward(self, x, *args, **kwargs)
    dropout = self.lora_dropout[name]
    p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
    seed, salt = self.nerbench_dropout_seed or (None, 0)
    return LoraProjection.apply(x, self.lora_A[name].weight, self.lora_B[name].weight, self.nerbench_frozen,
                                self.scaling[name], p, compute_dtype_for(x), seed.value if seed else None, salt,
                                self.nerbench_kernel_grad)


def lora_linears(model: nn.Module) -> list[nn.Module]:
    """peft's LoRA layers on plain and 4-bit linear layers (the kinds :class:`LoraProjection` computes)."""
    from peft.tuners.lora import Linear as LoraLinear

    kinds: tuple[type, ...] = (LoraLinear,)
    try:
        from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

        kinds += (LoraLinear4bit,)
    except ImportError:  # peft without bitsandbytes
        pass
    return [m for m in model.modules() if isinstance(m, kinds)]


def install(model: nn.Module, keep_weight: torch.dtype | None = None, keep_block_scales: bool = True,
            dropout_seed: DropoutSeed | None = None, kernel_grad: bool = False,
            fp8: Callable[[torch.Size], bool] | None = None) -> int:
    """Route every LoRA projection of ``model`` through :class:`LoraProjection`; returns how many. With
    ``keep_weight``, their 4-bit weights are kept dequantized in that dtype (:class:`FrozenWeight`); else, with
    ``keep_block_scales``, their block scales are (accel.plan decides both). With ``dropout_seed``, their dropout
    masks are keyed by that step seed and the projection's number (seeded_dropout.py). With ``kernel_grad`` (CUDA),
    the input gradient's LoRA product goes through the dropout mask and into the gradient in one Triton kernel
    (triton_kernels.masked_lora_grad_) instead of a matmul and two elementwise passes. With ``fp8``, the frozen weights'
    matmuls of the projections whose (out, in) weight shape it takes run in FP8 (fp8.py), each such weight kept as
    float8 (``keep_weight`` names the dtype a 4-bit weight is dequantized to first; accel.plan asks for it only where
    4-bit weights are kept dequantized, so that float8 takes the place of the 16-bit copy)."""
    layers = fused_layers(model)
    keep = keep_weight is None and keep_block_scales
    if dropout_seed is not None and len(layers) > MAX_SALTS:
        raise ValueError(f"seeded LoRA dropout: {len(layers)} projections, over the {MAX_SALTS} keys it has")
    for salt, layer in enumerate(layers):
        base = layer.get_base_layer()
        layer.nerbench_frozen = FrozenWeight(base, keep, keep_weight, fp8 is not None and fp8(frozen_shape(base)))
        layer.nerbench_dropout_seed = (dropout_seed, salt) if dropout_seed is not None else None
        layer.nerbench_kernel_grad = kernel_grad
        layer.forward = types.MethodType(fused_forward, layer)
    return len(layers)


def fused_layers(model: nn.Module) -> list[nn.Module]:
    return [layer for layer in lora_linears(model) if fusable(layer.get_base_layer())]


def fusable(base: nn.Module) -> bool:
    """A frozen base layer (no trained weight or bias: peft's bias="all" trains them) whose weight is plain, or 4-bit
    with its quantization state on it (bitsandbytes can also keep that on the module, which its own forward
    handles). Other layers keep peft's forward."""
    if any(p.requires_grad for p in base.parameters(recurse=False)):
        return False
    return not hasattr(base.weight, "quant_state") or base.weight.quant_state is not None
