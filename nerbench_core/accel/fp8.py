"""The frozen weights' matmuls in FP8 (``fp8_matmuls``; by default "auto", see :func:`pays`): a LoRA projection's
``x W^T`` and its input gradient ``g W`` on the FP8 tensor cores of Hopper and Ada GPUs, which do twice the bf16 work
a cycle.

Why: with the weights kept dequantized, the frozen weights' matmuls are the largest part of a decoder's training step
(Qwen1.5-7B on an H200: about 60% of the GPU's time, docs/PERFORMANCE.md), and QLoRA's weights carry 4 bits of their
own already. What it changes: both operands of those matmuls are rounded to float8 e4m3 (3 mantissa bits) with one
scale a row (a token of ``x`` or ``g``) and one a column of the weight (absmax scaling, as torch's and torchao's
"rowwise" FP8 recipe), the products accumulated in float32 and written in the compute dtype. The adapters, attention,
norms and everything else stay in the compute dtype. The arithmetic is not the bf16 path's; seeded F1 runs found no
difference beyond the seeds' noise (docs/PERFORMANCE.md, section 3).

The weight is stored twice in FP8 (one byte a weight each: the memory of one bf16 copy): ``(out, in)`` scaled by
output row for the forward, ``(in, out)`` scaled by input column for the input gradient, each the layout
``torch._scaled_mm`` takes as its second operand (column-major, the scales along its columns).
"""
from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F

FORMAT = torch.float8_e4m3fn
LARGEST = torch.finfo(FORMAT).max  # 448
TINY = 1e-12  # an all-zero row's amax: any scale serves, this one avoids dividing by zero
# torch._scaled_mm takes weights whose dimensions are multiples of 16; the rows of x and g are padded to it too, which
# torch 2.13 no longer asks for (whether the GPU machines' torch 2.11 does was not checked)
MULTIPLE = 16


def rowwise(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` (rows, k) as float8 e4m3 and its float32 scales (rows, 1): ``t ~= q * scale``, each row's largest
    magnitude at 448. On a GPU one Triton pass a row (triton_kernels.rowwise_fp8), else torch's operations."""
    if t.is_cuda:
        from . import triton_kernels

        return triton_kernels.rowwise_fp8(t)
    wide = t.float()
    scale = wide.abs().amax(dim=-1, keepdim=True).clamp_(min=TINY) / LARGEST
    return (wide / scale).clamp_(-LARGEST, LARGEST).to(FORMAT), scale


# ``fp8_matmuls = "auto"`` takes FP8 for a projection whose weight has both dimensions at least this large: on an
# H200 a projection's two matmuls, rounding included, ran faster in FP8 from the 7B's 4,096 on, and not at the 4B's
# 2,560 (docs/PERFORMANCE.md, kernel_times.py)
PAYS_FROM = 4096


def pays(shape: torch.Size) -> bool:
    """Whether ``auto`` takes FP8 for a frozen weight of this (out, in) shape."""
    return min(shape) >= PAYS_FROM


def chooser(setting: bool | str) -> Callable[[torch.Size], bool]:
    """Which frozen weights (by their (out, in) shape) take FP8 where the lever is on: for ``"auto"`` those that pay,
    for ``true`` every one. The plan counts them with it and installs them with it."""
    return pays if setting == "auto" else (lambda shape: True)


def unsupported(weight_shapes: list[torch.Size], device: torch.device | None, auto: bool = False) -> str | None:
    """Why the frozen matmuls cannot run in FP8 here, or None; with ``auto``, also where it was not measured to pay
    (GPUs other than Hopper)."""
    if device is None or device.type != "cuda":
        return "no CUDA"
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        return "no FP8 tensor cores (Ada or Hopper and later)"
    if auto and capability[0] != 9:
        return "auto: measured to pay on Hopper GPUs only (fp8_matmuls = true takes it here)"
    odd = [tuple(s) for s in weight_shapes if s[0] % MULTIPLE or s[1] % MULTIPLE]
    if odd:
        return f"a frozen weight of shape {odd[0]}: FP8 matmuls take dimensions in multiples of {MULTIPLE}"
    index = device.index or 0
    if index not in _TRIED:
        _TRIED[index] = _rowwise_fails(torch.device("cuda", index))
    return _TRIED[index]


_TRIED: dict[int, str | None] = {}  # a GPU's answer to _rowwise_fails, asked once a process


def _rowwise_fails(device: torch.device) -> str | None:
    """Why the rowwise-scaled FP8 matmul (torch's, with a bias, and the Triton rounding pass) does not compute the
    product on this GPU, or None: which GPUs torch's kernel serves has changed from one torch release to the next
    (Ada's and Blackwell's among them), so it is tried, on a 32 x 32 product of rows of different scales and a bias,
    against float32 arithmetic on the same rounded operands."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(2 * MULTIPLE, 2 * MULTIPLE, generator=generator) * torch.logspace(-1, 1, 2 * MULTIPLE)[:, None]
    bias = torch.randn(2 * MULTIPLE, generator=generator).to(torch.bfloat16)
    try:
        a_q, a_scale = rowwise(a.to(device))
        out = torch.empty(2 * MULTIPLE, 2 * MULTIPLE, dtype=torch.bfloat16, device=device)
        _scaled_mm(a_q, a_scale, a_q.t(), a_scale.view(1, -1), out, bias.to(device))
        wide = a_q.float() * a_scale
        want = (wide @ wide.t()).cpu() + bias.float()
        got = out.float().cpu()
    except torch.OutOfMemoryError:
        raise  # not an answer about the GPU (and not kept as one)
    except Exception as err:  # noqa: BLE001 (the reason goes into the record: any failure means off)
        return f"the rowwise FP8 matmul fails on this GPU: {str(err).splitlines()[0][:200]}"
    if not torch.allclose(got, want, rtol=1e-2, atol=1e-2):  # bf16's rounding of the output is 2**-9 of it
        return "the rowwise FP8 matmul gives wrong products on this GPU"
    return None


class _LastRounding:
    """The last input :meth:`Fp8Weight.linear` rounded, and its rounding: a layer's q, k and v projections (and its
    gate and up) read one input, which is then rounded once, not once each. Keyed by the tensor itself (a weak
    reference) and its version counter, so that a tensor changed in place, or freed and its memory reused, is rounded
    again (writes that bypass the version counter, such as ``.data`` or a graph's replay into a kept tensor, would not
    be seen: no projection's input is written so); the rounding is let go with its input, so that none is held beyond
    it. Inference tensors have no version counter: they are rounded every time."""

    def __init__(self):
        self.clear()

    def clear(self, ref: weakref.ref | None = None) -> None:
        if ref is None or ref is self.ref:  # (a weak reference's callback: only for the input it was made for)
            self.ref, self.version, self.rounded = None, -1, None

    def get(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.ref is None or self.ref() is not t or t.is_inference():
            return None
        return self.rounded if t._version == self.version else None

    def put(self, t: torch.Tensor, rounded: tuple[torch.Tensor, torch.Tensor]) -> None:
        if not t.is_inference():
            self.ref, self.version, self.rounded = weakref.ref(t, self.clear), t._version, rounded


_LAST = _LastRounding()


def forget_rounding() -> None:
    """Let go of the last input's rounding (at a case's end: nothing of one case is held into the next)."""
    _LAST.clear()


class Fp8Weight:
    """A frozen weight (out, in) in float8 e4m3, in both layouts, with the matmuls that read it."""

    def __init__(self, weight: torch.Tensor):
        self.out_features, self.in_features = weight.shape
        forward, forward_scale = rowwise(weight)  # (out, in), a scale an output row
        backward, backward_scale = rowwise(weight.t().contiguous())  # (in, out), a scale an input column
        self.forward_q, self.forward_scale = forward, forward_scale.view(1, -1)
        self.backward_q, self.backward_scale = backward, backward_scale.view(1, -1)

    def linear(self, x: torch.Tensor, dtype: torch.dtype, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x W^T + bias`` in ``dtype``; ``x`` (..., in), ``bias`` (out,) in ``dtype`` (added by the matmul's epilogue,
        not by a pass of its own)."""
        return self._matmul(x, self.forward_q, self.forward_scale, dtype, bias, share=True)

    def grad_input(self, g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``g W`` in ``dtype``; ``g`` (rows, out)."""
        return self._matmul(g, self.backward_q, self.backward_scale, dtype)

    @staticmethod
    def _matmul(a: torch.Tensor, q: torch.Tensor, q_scale: torch.Tensor, dtype: torch.dtype,
                bias: torch.Tensor | None = None, share: bool = False) -> torch.Tensor:
        """``a q^T + bias`` (q's rows scaled by ``q_scale``), into a new tensor of ``a``'s leading shape: not a view,
        which the projection's autograd function could not hand out for in-place use. ``share``: ``a``'s rounding is
        shared with the next call on the same tensor (:class:`_LastRounding`; gradients are not shared: each
        projection has its own)."""
        lead, k, n = a.shape[:-1], a.shape[-1], q.shape[0]
        rows = a.numel() // k
        short = -rows % MULTIPLE  # rows padded with zeros to a multiple of 16, cut off again after
        rounded = _LAST.get(a) if share else None
        if rounded is None:
            rounded = rowwise(_padded_rows(a, short))
            if share:
                _LAST.put(a, rounded)
        out = torch.empty(*lead, n, dtype=dtype, device=a.device)
        into = out.view(rows, n) if not short else torch.empty(rows + short, n, dtype=dtype, device=a.device)
        _scaled_mm(*rounded, q.t(), q_scale, into, bias)
        if short:
            out.view(rows, n).copy_(into[:rows])
        return out


def _padded_rows(a: torch.Tensor, short: int) -> torch.Tensor:
    """``a`` as (rows, k) with unit column stride (the rounding pass reads rows so; an expanded or transposed gradient
    is copied), ``short`` rows of zeros added."""
    flat = a.reshape(-1, a.shape[-1])
    if flat.stride(1) != 1:
        flat = flat.contiguous()
    return F.pad(flat, (0, 0, 0, short)) if short else flat


def _scaled_mm(a_q, a_scale, b_q, b_scale, out: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """``out = (a_q * a_scale) @ (b_q * b_scale) + bias`` with float32 accumulation, written in ``out``'s dtype."""
    try:
        torch._scaled_mm(a_q, b_q, scale_a=a_scale, scale_b=b_scale, bias=bias, out_dtype=out.dtype, out=out)
    except RuntimeError:
        if a_q.is_cuda:
            raise
        # (CPU tests on the GPU machines' torch 2.11, whose CPU kernel takes one scale a matrix) the same products
        product = (a_q.float() * a_scale) @ (b_q.float() * b_scale)
        out.copy_(product if bias is None else product + bias.float())
