"""liger-kernel's fused RMSNorm and SwiGLU (Triton) for the model types it knows (``fused_kernels = true``).

Its fused linear cross-entropy is for language-model heads: it would replace a token classifier's forward.
Its RoPE kernel declares the batch size a compile-time constant, so Triton compiles it anew for every batch
size it meets, and token-budget batches change size at almost every step: on an H100 that compilation was
41% of the host's time in a Qwen1.5-0.5B step (torch.profiler, docs/PERFORMANCE.md). transformers' own RoPE
is a few elementwise operations.

liger also swaps transformers' module classes for the rest of the process, so a later case of the same model type
built in that process gets its norms and MLPs even with ``fused_kernels = false``; the perf benchmark therefore runs
each set-up in its own process. The Trainer applies it (``use_liger_kernel``), from the config given here.
"""
from __future__ import annotations

CONFIG = {"fused_linear_cross_entropy": False, "cross_entropy": False, "rope": False}


def model_type_known(model_type: str) -> bool | None:
    """Whether liger-kernel knows this model type; None where liger-kernel is not installed."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        return None
    return model_type in MODEL_TYPE_TO_APPLY_LIGER_FN
