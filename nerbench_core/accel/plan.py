"""The speed levers of one case, decided in one place, before any of them touches the model.

:func:`plan` reads the spec, the model as its backend built it and the device's memory, and returns a frozen
:class:`AccelPlan`: for each lever whether it is on and why. :func:`apply` then installs the levers that change the
model (compiled layers, fused LoRA projections); the Trainer and the training recipe read the others from the plan
(liger's config, gradient checkpointing, CUDA graphs and their batch shapes). The record keeps ``plan.facts()``, and
the table reads those facts.

Each lever has its off switch in the spec's ``train`` table and a test that it computes what the plain path does.
The order of the decisions matters where one lever's memory is another's: the 4-bit weights are kept dequantized
only where they fit beside the step's activations without checkpointing, so keeping them never turns checkpointing
on.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..precision import compute_dtype, dtype_name
from . import compiling, cuda_graphs, liger, lora_kernels, memory


@dataclass(frozen=True)
class Lever:
    on: bool
    why: str  # the reason it is on or off, in a few words
    detail: str = ""  # what it did, where there is more to say (projections, bytes, shapes)


@dataclass(frozen=True)
class AccelPlan:
    liger: Lever  # liger-kernel's fused RMSNorm and SwiGLU (the Trainer applies it)
    torch_compile: Lever  # regional torch.compile of the repeated layers
    fused_lora: Lever  # each LoRA projection as one autograd function
    keep_dequantized: Lever  # the frozen 4-bit weights dequantized once and kept
    gradient_checkpointing: Lever
    cuda_graphs: Lever  # training steps replayed from CUDA graphs
    sdpa_without_cudnn: Lever  # SDPA's shape-agnostic kernels instead of cuDNN's, which re-plans for every shape
    free_bytes: int | None = None  # the memory the plan was made with

    @property
    def liger_config(self) -> dict | None:
        return dict(liger.CONFIG) if self.liger.on else None

    def batch_shapes(self, spec) -> cuda_graphs.BatchShapes | None:
        return cuda_graphs.batch_shapes(spec) if self.cuda_graphs.on else None

    def facts(self) -> dict:
        """The plan as the record keeps it: {lever: {on, why, detail}}."""
        return {k: v for k, v in asdict(self).items() if isinstance(v, dict)}


def plan(spec, built, device_memory: memory.DeviceMemory) -> AccelPlan:
    t = spec.train
    cuda = torch.cuda.is_available()
    base = built.transformers_model
    own = built.backend.own_kernels
    free = device_memory.free_bytes()
    dtype = compute_dtype(spec)

    def off_for_backend(lever_on: bool) -> str | None:
        if not lever_on:
            return "not asked for"
        if own or base is None:
            return f"the {built.backend.name} backend has its own kernels"
        return None

    # liger: CUDA, liger-kernel installed and knowing the model type; compiled layers get inductor's fusions instead
    why = off_for_backend(t.fused_kernels) or ("no CUDA" if not cuda else "torch.compile fuses instead"
                                               if t.torch_compile else None)
    if why is None:
        known = liger.model_type_known(base.config.model_type)
        why = "liger-kernel not installed" if known is None else None if known else f"{base.config.model_type} unknown"
    liger_lever = Lever(why is None, why or "rms_norm, swiglu")

    why = off_for_backend(t.torch_compile)
    blocks = compiling.repeated_blocks(base) if why is None else []
    if why is None and not blocks:
        raise ValueError(f"{spec.name}: torch_compile found no repeated layers to compile")
    compile_lever = Lever(why is None, why or "asked for", f"{len(blocks)} x {type(blocks[0]).__name__}" if blocks else "")

    why = off_for_backend(t.fused_lora) or ("torch.compile fuses instead" if t.torch_compile else None)
    layers = lora_kernels.fused_layers(built.model) if why is None else []
    if why is None and not layers:
        why = "no LoRA projections"
    fused = Lever(why is None, why or "asked for", f"{len(layers)} projections" if layers else "")

    # the step's activations without checkpointing, against the memory left once the model is loaded
    tokens = memory.tokens_per_step(t)
    room = (memory.room_beside_activations(base.config, tokens, free, torch.finfo(dtype).bits // 8,
                                          lm_head=spec.paradigm == "generative") if base is not None else None)
    bases = [layer.get_base_layer() for layer in layers]
    need = lora_kernels.dequantized_bytes(bases, dtype)
    keep = fused.on and lora_kernels.keep_weights(t.keep_dequantized, bases, dtype, room)
    keep_lever = Lever(keep, ("asked for" if t.keep_dequantized is True else "fits beside the activations") if keep
                       else "no 4-bit weights" if fused.on and not need else
                       "does not fit beside the activations" if fused.on and t.keep_dequantized == "auto" else
                       "not asked for" if fused.on else "needs fused LoRA",
                       f"{dtype_name(dtype)}, {need / 1e9:.1f} GB" if keep else "")

    if own or base is None:  # the backend decided when it loaded: its own checkpointing for true and "auto"
        checkpointing = t.gradient_checkpointing is not False
        why = f"the {built.backend.name} backend's own"
    else:
        checkpointing = memory.use_checkpointing(t.gradient_checkpointing,
                                                 None if room is None else room - (need if keep else 0))
        why = ("asked for" if t.gradient_checkpointing != "auto" else
               "activations do not fit" if checkpointing else "activations fit")
    checkpointing_lever = Lever(checkpointing, why)

    why = ("not asked for" if not t.cuda_graphs else "no CUDA" if not cuda else
           "gradient checkpointing" if checkpointing else "torch.compile" if t.torch_compile else
           off_for_backend(True))
    graphs = Lever(why is None, why or "asked for")

    sdpa = Lever(cuda, "every batch shape would re-plan cuDNN's kernel" if cuda else "no CUDA")
    return AccelPlan(liger_lever, compile_lever, fused, keep_lever, checkpointing_lever, graphs, sdpa, free)


def apply(accel: AccelPlan, spec, built) -> None:
    """Install the levers that change the model itself, as planned."""
    if accel.sdpa_without_cudnn.on:
        torch.backends.cuda.enable_cudnn_sdp(False)
    if accel.torch_compile.on:
        compiling.compile_layers(built.transformers_model)
    if accel.fused_lora.on:
        keep = compute_dtype(spec) if accel.keep_dequantized.on else None
        lora_kernels.install(built.model, keep, accel.free_bytes)
