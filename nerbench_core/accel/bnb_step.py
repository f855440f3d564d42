"""bitsandbytes' optimizer step without a device synchronization after each parameter (``bnb_without_syncs``, on by
default; ``--set bnb_without_syncs=false`` keeps bitsandbytes' own step).

Why: bitsandbytes 0.50's ``Optimizer8bit.step`` (the base of its 8-bit and 32-bit optimizers) calls
``torch.cuda.synchronize()`` after every parameter's update. Those synchronizations serve its paged states, whose
prefetches are asynchronous; a non-paged optimizer's updates are kernels on the default stream, which orders them
after the step's gradients and before the next step's work without any. Each one leaves the GPU idle while the host
launches the next parameter's update: the seed suite's Qwen1.5-14B trains with the 8-bit AdamW, 561 LoRA matrices a
step, and its profiled steps on an H200 spent about 29 ms of 127 with the GPU idle (docs/PERFORMANCE.md, section 4).
Without them the same kernels run in the same order on the same stream: the same arithmetic. (bitsandbytes' own
pull request 2050, open, removes them for non-paged optimizers too.)
"""
from __future__ import annotations

import contextlib

import torch

# transformers' names (TrainingArguments.optim) of the bitsandbytes optimizers without paged states
UNPAGED = frozenset({"adamw_bnb_8bit", "adamw_8bit", "ademamix", "ademamix_8bit", "lion_8bit", "lion_32bit",
                     "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit"})


def unsupported(optimizer: str) -> str | None:
    """Why the lever cannot serve this optimizer (by its Trainer name), or None."""
    return None if optimizer in UNPAGED else f"optimizer {optimizer}: not one of bitsandbytes' unpaged ones"


@contextlib.contextmanager
def without_syncs():
    """While the block runs, bitsandbytes' optimizer steps leave out their synchronization after each parameter where
    the current stream is the default one, on which their kernels run; elsewhere they keep it, as bitsandbytes has it.
    It replaces a module's name for the process: one training at a time (as nerbench trains), restored after."""
    import bitsandbytes.optim.optimizer as optimizer_module

    synchronize = optimizer_module.sync_gpu

    def sync_off_the_default_stream(t: torch.Tensor) -> None:
        if t.device.type != "cuda" or torch.cuda.current_stream(t.device) != torch.cuda.default_stream(t.device):
            synchronize(t)

    optimizer_module.sync_gpu = sync_off_the_default_stream
    try:
        yield
    finally:
        optimizer_module.sync_gpu = synchronize
