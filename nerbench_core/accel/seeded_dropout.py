"""LoRA dropout whose mask is a function of a step seed and the projection, not of the random generator's state:
what lets CUDA graphs record steps that recompute checkpointed layers (``cuda_graphs`` with gradient checkpointing).

Why: a card too small for the activations trains with gradient checkpointing, and such steps were eager: on an H200
as a 12 GB card, a Qwen1.5-14B step kept the GPU busy for a small part of its time, the rest the host launching
kernels (docs/PERFORMANCE.md has the numbers). Graphs would remove that, but checkpointing replays each layer's forward in the
backward and must draw the same dropout masks again: torch.utils.checkpoint saves and restores the CUDA generator's
state for that, which cannot be done while a graph is recorded (pytorch/pytorch#162504; a graph-safe clone of the
state does not exist yet, #170535). The only random draws inside nerbench's decoder layers are the LoRA dropouts,
computed by :class:`~.lora_kernels.LoraProjection`; here their masks come from a counter-based generator (Philox, as
torch's own dropout) keyed by a seed drawn once a step (:class:`DropoutSeed`, outside the checkpointed layers, graph
safe) and a number per projection. The forward, its recomputation and the backward all draw the same mask, and no
mask is kept: the backward applies the same keyed draw to the gradient.

The masks are other draws than torch's dropout would make (the same keep rate), so this is used only where it
enables graphs: with gradient checkpointing on CUDA. Elsewhere LoRA dropout is torch's, as before.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd  # every dropout module's base (Dropout, Dropout1d-3d, AlphaDropout)

MAX_SALTS = 4096  # projections a model may have: the generator's key is seed * MAX_SALTS + salt


class DropoutSeed:
    """One step's dropout seed: a 1-element int64 tensor on the device, drawn again by :meth:`draw` at the start of
    each step (from torch's generator, so a recorded graph draws a new one at every replay)."""

    def __init__(self, device: torch.device):
        self.value = torch.zeros(1, dtype=torch.int64, device=device)

    def draw(self) -> None:
        self.value.random_(0, 2 ** 40)  # times MAX_SALTS, plus the salt, still within int64


def seeded_dropout(x: torch.Tensor, p: float, seed: torch.Tensor, salt: int) -> torch.Tensor:
    """``x * mask / (1 - p)``, the mask a function of (``seed``, ``salt``, position) alone: the same for every call
    with the same keys and shape. ``seed``: a 1-element int64 tensor on ``x``'s device (read there, not on the host,
    so that it can change between replays of a graph)."""
    if x.is_cuda:
        from . import triton_kernels

        return triton_kernels.keyed_dropout(x, p, seed, salt, MAX_SALTS)
    return x * reference_mask(x.shape, p, seed, salt, x.device).to(x.dtype) * (1.0 / (1.0 - p))


def reference_mask(shape, p: float, seed: torch.Tensor, salt: int, device) -> torch.Tensor:
    """The keep mask on a CPU (tests, CPU runs): torch's generator seeded from the keys. Not the GPU kernel's draws;
    the same function of the keys on one device, which is what recomputation needs."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed.item()) * MAX_SALTS + salt)
    return (torch.rand(shape, generator=generator) >= p).to(device)


def other_dropout(layers: list[nn.Module], config) -> str | None:
    """What else draws random numbers inside the checkpointed ``layers`` while training (dropout modules, or
    dropout rates in the model's ``config`` such as attention dropout; LoRA dropouts and the classifier's, which is
    outside the layers, aside), or None. With any, checkpointed steps keep torch's state saving and stay eager."""
    for layer in layers:
        for name, module in layer.named_modules():
            if isinstance(module, _DropoutNd) and module.p > 0 and "lora_dropout" not in name:
                return f"dropout {module.p} in {type(layer).__name__}.{name}"
    for key, value in (config.to_dict().items() if config is not None else ()):
        if ("dropout" in key or "pdrop" in key) and not key.startswith("classifier") and isinstance(value, float) \
                and value > 0:
            return f"{key} {value}"
    return None
