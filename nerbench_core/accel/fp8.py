"""The frozen weights' matmuls in FP8 (``fp8_matmuls``, off by default): a LoRA projection's ``x W^T`` and its input
gradient ``g W`` on the FP8 tensor cores of Hopper and Ada GPUs, which do twice the bf16 work a cycle.

Why: with the weights kept dequantized, the frozen weights' matmuls are the largest part of a decoder's training step
(Qwen1.5-7B on an H200: about 60% of the GPU's time, docs/PERFORMANCE.md), and QLoRA's weights carry 4 bits of their
own already. What it changes: both operands of those matmuls are rounded to float8 e4m3 (3 mantissa bits) with one
scale a row (a token of ``x`` or ``g``) and one a column of the weight (absmax scaling, as torch's and torchao's
"rowwise" FP8 recipe), the products accumulated in float32 and written in the compute dtype. The adapters, attention,
norms and everything else stay in the compute dtype. The arithmetic is not the bf16 path's, so the lever is off until
seeded F1 runs show it within noise (docs/PERFORMANCE.md says where that stands).

The weight is stored twice in FP8 (one byte a weight each: the memory of one bf16 copy): ``(out, in)`` scaled by
output row for the forward, ``(in, out)`` scaled by input column for the input gradient, each the layout
``torch._scaled_mm`` takes as its second operand (column-major, the scales along its columns).
"""
from __future__ import annotations

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


def unsupported(weight_shapes: list[torch.Size], device: torch.device | None) -> str | None:
    """Why the frozen matmuls cannot run in FP8 here, or None."""
    if device is None or device.type != "cuda":
        return "no CUDA"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return "no FP8 tensor cores (Ada or Hopper and later)"
    odd = [tuple(s) for s in weight_shapes if s[0] % MULTIPLE or s[1] % MULTIPLE]
    if odd:
        return f"a frozen weight of shape {odd[0]}: FP8 matmuls take dimensions in multiples of {MULTIPLE}"
    return None


class Fp8Weight:
    """A frozen weight (out, in) in float8 e4m3, in both layouts, with the matmuls that read it."""

    def __init__(self, weight: torch.Tensor):
        self.out_features, self.in_features = weight.shape
        forward, forward_scale = rowwise(weight)  # (out, in), a scale an output row
        backward, backward_scale = rowwise(weight.t().contiguous())  # (in, out), a scale an input column
        self.forward_q, self.forward_scale = forward, forward_scale.view(1, -1)
        self.backward_q, self.backward_scale = backward, backward_scale.view(1, -1)

    def linear(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``x W^T`` in ``dtype``; ``x`` (..., in)."""
        return self._matmul(x, self.forward_q, self.forward_scale, dtype)

    def grad_input(self, g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``g W`` in ``dtype``; ``g`` (rows, out)."""
        return self._matmul(g, self.backward_q, self.backward_scale, dtype)

    @staticmethod
    def _matmul(a: torch.Tensor, q: torch.Tensor, q_scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``a q^T`` (q's rows scaled by ``q_scale``), into a new tensor of ``a``'s leading shape: not a view, which
        the projection's autograd function could not hand out for in-place use."""
        lead, k, n = a.shape[:-1], a.shape[-1], q.shape[0]
        flat = a.reshape(-1, k)
        if flat.stride(1) != 1:  # (an expanded or transposed gradient) the rounding pass reads rows of unit stride
            flat = flat.contiguous()
        rows = flat.shape[0]
        short = -rows % MULTIPLE  # rows padded with zeros to a multiple of 16, cut off again after
        if short:
            flat = F.pad(flat, (0, 0, 0, short))
        a_q, a_scale = rowwise(flat)
        out = torch.empty(*lead, n, dtype=dtype, device=a.device)
        into = out.view(rows, n) if not short else torch.empty(rows + short, n, dtype=dtype, device=a.device)
        _scaled_mm(a_q, q.t(), a_scale, q_scale, into)
        if short:
            out.view(rows, n).copy_(into[:rows])
        return out


def _scaled_mm(a_q, b_q, a_scale, b_scale, out: torch.Tensor) -> None:
    """``out = (a_q * a_scale) @ (b_q * b_scale)`` with float32 accumulation, written in ``out``'s dtype."""
    try:
        torch._scaled_mm(a_q, b_q, scale_a=a_scale, scale_b=b_scale, out_dtype=out.dtype, out=out)
    except RuntimeError:
        if a_q.is_cuda:
            raise
        # (CPU tests on the GPU machines' torch 2.11, whose CPU kernel takes one scale a matrix) the same products
        out.copy_((a_q.float() * a_scale) @ (b_q.float() * b_scale))
