"""Which dtypes a case computes and keeps its weights in. A leaf: everyone asks it, it asks no nerbench module."""
from __future__ import annotations

import torch


def bf16_available() -> bool:
    """bf16 arithmetic in hardware: a CUDA GPU that has it, or a CPU with AVX512-BF16 (or AMX)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return bool(cpu and (cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported()))


def compute_dtype(spec) -> torch.dtype:
    """The dtype matmuls run in (the Trainer's autocast, 4-bit compute, prediction)."""
    return torch.bfloat16 if spec.train.bf16 and bf16_available() else torch.float32


def autocast_dtype(spec) -> torch.dtype | None:
    """What prediction runs under autocast in: the compute dtype where it is not float32."""
    return torch.bfloat16 if compute_dtype(spec) == torch.bfloat16 else None


def weights_dtype(spec) -> torch.dtype:
    """Weights that are trained stay in float32 (bf16 would lose small updates); frozen ones may be bf16."""
    return torch.float32 if spec.method == "full" else compute_dtype(spec)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
