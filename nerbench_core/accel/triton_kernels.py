"""nerbench's own Triton kernels. Imported only where they run (a CUDA device; tests also run them on a CPU through
Triton's interpreter, TRITON_INTERPRET=1): Triton comes with CUDA builds of torch, not with the CPU build.

The callers (seeded_dropout.py, lora_kernels.py, rope.py) hold what each kernel is for and its reference in torch;
here are only the kernels and their launches. The dropout masks are indexed by the element's offset in the row-major
``(rows, columns)`` layout, ``row * columns + column``, so a keyed mask drawn over ``x`` in the forward is the same
mask drawn over a gradient of ``x``'s shape in the backward.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .fp8 import FORMAT, LARGEST, TINY


@triton.jit
def _keep(seed_ptr, salt, offsets, p, SALTS: tl.constexpr):
    """The keyed keep mask (seeded_dropout.py): Philox on (seed * SALTS + salt, offset)."""
    return tl.rand(tl.load(seed_ptr) * SALTS + salt, offsets) >= p


@triton.jit
def _dropout_kernel(x_ptr, out_ptr, n, seed_ptr, salt, p, scale, BLOCK: tl.constexpr, SALTS: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < n
    x = tl.load(x_ptr + offsets, mask=inside)
    keep = _keep(seed_ptr, salt, offsets, p, SALTS)
    tl.store(out_ptr + offsets, tl.where(keep, x * scale, 0.0).to(x.dtype), mask=inside)


_BLOCK = 1024


def keyed_dropout(x: torch.Tensor, p: float, seed: torch.Tensor, salt: int, salts: int) -> torch.Tensor:
    """``x`` with its elements kept at rate ``1 - p`` by the keyed mask and scaled by ``1 / (1 - p)``, as a new
    contiguous tensor."""
    x = x.contiguous()
    n = x.numel()
    _check_offsets(n)
    out = torch.empty_like(x)
    _dropout_kernel[(triton.cdiv(n, _BLOCK),)](x, out, n, seed, salt, p, 1.0 / (1.0 - p), BLOCK=_BLOCK, SALTS=salts)
    return out


@triton.jit
def _masked_lora_grad_kernel(gx_ptr, gd_ptr, a_ptr, mask_ptr, seed_ptr, salt, p, scale, M, N, r,
                             stride_gx, stride_gd, stride_a,
                             R: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, SEEDED: tl.constexpr,
                             SALTS: tl.constexpr, IEEE: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    ranks = tl.arange(0, R)
    gd = tl.load(gd_ptr + rows[:, None] * stride_gd + ranks[None, :],
                 mask=(rows[:, None] < M) & (ranks[None, :] < r), other=0.0)
    a = tl.load(a_ptr + ranks[:, None] * stride_a + cols[None, :],
                mask=(ranks[:, None] < r) & (cols[None, :] < N), other=0.0)
    if IEEE:  # float32 inputs: full precision, as torch's matmuls (Triton would take TF32)
        product = tl.dot(gd, a, input_precision="ieee")
    else:  # (BM, BN), float32 accumulation
        product = tl.dot(gd, a)
    inside = (rows[:, None] < M) & (cols[None, :] < N)
    offsets = rows[:, None] * N + cols[None, :]
    if SEEDED:
        keep = _keep(seed_ptr, salt, offsets, p, SALTS)
    else:
        keep = tl.load(mask_ptr + offsets, mask=inside, other=0) != 0
    gx_at = gx_ptr + rows[:, None] * stride_gx + cols[None, :]
    gx = tl.load(gx_at, mask=inside)
    tl.store(gx_at, (gx.to(tl.float32) + tl.where(keep, product * scale, 0.0)).to(gx.dtype), mask=inside)


MAX_RANK = 128  # the LoRA product is one tl.dot a tile: (64 x r) by (r x 128) in shared memory


def masked_lora_grad_(grad_x: torch.Tensor, grad_down: torch.Tensor, a: torch.Tensor, p: float,
                      mask: torch.Tensor | None = None, seed: torch.Tensor | None = None, salt: int = 0,
                      salts: int = 1) -> torch.Tensor:
    """``grad_x += keep * (grad_down @ a) / (1 - p)`` in place, in one pass over ``grad_x``: ``grad_x`` (M, N),
    ``grad_down`` (M, r), ``a`` (r, N); ``keep`` read from ``mask`` (bool, M x N) or drawn from (``seed``, ``salt``)."""
    m, n = grad_x.shape
    r = a.shape[0]
    if grad_x.stride(1) != 1 or grad_down.shape != (m, r) or a.shape != (r, n):
        raise ValueError(f"masked_lora_grad_: grad_x (M, N) with unit column stride, grad_down (M, r), a (r, N); got "
                         f"{tuple(grad_x.shape)} strides {grad_x.stride()}, {tuple(grad_down.shape)}, {tuple(a.shape)}")
    if (mask is None) == (seed is None):
        raise ValueError("masked_lora_grad_: give the stored mask or the seed, one of them")
    if r > MAX_RANK:
        raise ValueError(f"masked_lora_grad_: rank {r}, over the {MAX_RANK} its one tile of the product takes")
    _check_offsets(m * n)
    grad_down, a = grad_down.contiguous(), a.contiguous()
    seeded = mask is None
    mask = grad_x if seeded else mask.contiguous().view(torch.uint8)  # unread where seeded
    seed = grad_x if seed is None else seed  # unread where not seeded
    bm, bn = 64, 128
    _masked_lora_grad_kernel[(triton.cdiv(m, bm), triton.cdiv(n, bn))](
        grad_x, grad_down, a, mask, seed, salt, p, 1.0 / (1.0 - p), m, n, r,
        grad_x.stride(0), grad_down.stride(0), a.stride(0),
        R=max(16, triton.next_power_of_2(r)), BM=bm, BN=bn, SEEDED=seeded, SALTS=salts,
        IEEE=grad_down.dtype == torch.float32)
    return grad_x


@triton.jit
def _rope_kernel(x_ptr, out_ptr, cos_ptr, sin_ptr, T, H, stride_xb, stride_xh, stride_xt, stride_ob, stride_oh,
                 stride_ot, stride_cb, stride_ct, HALF: tl.constexpr, H_PAD: tl.constexpr, HALF_PAD: tl.constexpr,
                 BACKWARD: tl.constexpr):
    """One (batch, position) row of every head: out1 = x1 c1 - x2 s1, out2 = x2 c2 + x1 s2 (x1, x2 the two halves
    of a head); the backward applies the transposed rotation to the gradient."""
    row = tl.program_id(0).to(tl.int64)  # int64: batch and position offsets of a large batch pass 2**31
    b, t = row // T, row % T
    heads = tl.arange(0, H_PAD)[:, None]
    dims = tl.arange(0, HALF_PAD)[None, :]
    inside = (heads < H) & (dims < HALF)
    c1 = tl.load(cos_ptr + b * stride_cb + t * stride_ct + dims, mask=dims < HALF, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + b * stride_cb + t * stride_ct + HALF + dims, mask=dims < HALF, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + b * stride_cb + t * stride_ct + dims, mask=dims < HALF, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + b * stride_cb + t * stride_ct + HALF + dims, mask=dims < HALF, other=0.0).to(tl.float32)
    x_at = x_ptr + b * stride_xb + t * stride_xt + heads * stride_xh + dims
    x1 = tl.load(x_at, mask=inside, other=0.0)
    x2 = tl.load(x_at + HALF, mask=inside, other=0.0)
    f1, f2 = x1.to(tl.float32), x2.to(tl.float32)
    if BACKWARD:
        o1 = f1 * c1 + f2 * s2
        o2 = f2 * c2 - f1 * s1
    else:
        o1 = f1 * c1 - f2 * s1
        o2 = f2 * c2 + f1 * s2
    out_at = out_ptr + b * stride_ob + t * stride_ot + heads * stride_oh + dims
    tl.store(out_at, o1.to(x1.dtype), mask=inside)
    tl.store(out_at + HALF, o2.to(x1.dtype), mask=inside)


def rotary_mismatch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> str | None:
    """Why :func:`rotary` cannot take these tensors, or None."""
    if (x.dim() != 4 or cos.dim() != 3 or x.shape[-1] % 2 or cos.shape != sin.shape
            or cos.shape[0] not in (1, x.shape[0]) or cos.shape[1:] != x.shape[2:]):
        return (f"x (batch, heads, positions, an even head_dim), cos and sin (batch or 1, positions, head_dim); got "
                f"{tuple(x.shape)}, {tuple(cos.shape)}, {tuple(sin.shape)}")
    if x.stride(3) != 1 or cos.stride(2) != 1 or cos.stride() != sin.stride():
        return "head_dim must be the unit stride of x, cos and sin, and cos and sin of one layout"
    return None


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool = False) -> torch.Tensor:
    """The rotation of ``x`` (batch, heads, positions, head_dim; any strides, the last unit) by ``cos`` and
    ``sin`` (batch or 1, positions, head_dim), into a new tensor of ``x``'s layout; ``backward``: the transposed
    rotation, the gradient of ``x`` from the output's."""
    if why := rotary_mismatch(x, cos, sin):
        raise ValueError(f"rotary: {why}")
    bsz, heads, positions, dim = x.shape
    out = torch.empty_like(x)  # keeps x's layout (positions before heads, as the projections wrote them)
    cos_b = cos.stride(0) if cos.shape[0] > 1 else 0
    half = dim // 2
    _rope_kernel[(bsz * positions,)](
        x, out, cos, sin, positions, heads, x.stride(0), x.stride(1), x.stride(2), out.stride(0), out.stride(1),
        out.stride(2), cos_b, cos.stride(1), HALF=half, H_PAD=triton.next_power_of_2(heads),
        HALF_PAD=triton.next_power_of_2(half), BACKWARD=backward)
    return out


@triton.jit
def _rowwise_fp8_kernel(x_ptr, q_ptr, scale_ptr, K, stride_x, stride_q, LARGEST: tl.constexpr, TINY: tl.constexpr,
                        BLOCK: tl.constexpr):
    """One row: its largest magnitude (first pass), then the row scaled to it and rounded to float8 (second pass)."""
    row = tl.program_id(0).to(tl.int64)
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.maximum(tl.max(amax, axis=0), TINY) / LARGEST
    for start in range(0, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
        q = tl.clamp(x / scale, -LARGEST, LARGEST)
        tl.store(q_ptr + row * stride_q + cols, q.to(q_ptr.dtype.element_ty), mask=cols < K)
    tl.store(scale_ptr + row, scale)


def rowwise_fp8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` (rows, k; unit column stride) as float8 e4m3 and its float32 scales (rows, 1), each row's largest
    magnitude at the format's largest value (fp8.rowwise holds the reference in torch)."""
    if t.dim() != 2 or t.stride(1) != 1:
        raise ValueError(f"rowwise_fp8: a (rows, k) tensor with unit column stride; got {tuple(t.shape)} strides "
                         f"{t.stride()}")
    rows, k = t.shape
    q = torch.empty(rows, k, dtype=FORMAT, device=t.device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=t.device)
    if rows:
        _rowwise_fp8_kernel[(rows,)](t, q, scale, k, t.stride(0), q.stride(0), LARGEST=LARGEST, TINY=TINY,
                                     BLOCK=min(1024, triton.next_power_of_2(k)))
    return q, scale


def _check_offsets(n: int) -> None:
    if n >= 2 ** 31:
        raise ValueError(f"{n} elements, over the int32 offsets of nerbench's Triton kernels")
