"""The speed levers of one case, decided in one place, before any of them touches the model.

:func:`plan` reads the spec, the model as its backend built it and the device's memory, and returns a frozen
:class:`AccelPlan`: for each lever whether it is on and why. :func:`apply` then installs the levers that change the
model (compiled layers, fused LoRA projections); the Trainer and the training recipe read the others from the plan
(liger's config, gradient checkpointing, CUDA graphs and their batch shapes). The record keeps ``plan.facts()``, and
the table reads those facts.

Each lever has its off switch in the spec's ``train`` table and a test that it computes what the plain path does
(FP8's, which does not, that it differs only by its rounding; its F1 was checked against bf16 with seeds).
The order of the decisions matters where one lever's memory is another's: the 4-bit weights are kept dequantized
only where they fit beside the step's activations without checkpointing, so keeping them never turns checkpointing
on.
"""
from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass

import torch

from ..precision import compute_dtype, dtype_name, weights_dtype
from . import (bnb_step, compiling, cuda_graphs, fp8, graphed_generation, liger, lora_kernels, memory, packing, rope,
               seeded_dropout)


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
    fused_lora_backward: Lever  # its input gradient through the dropout mask in one Triton kernel
    fused_rope: Lever  # q and k's rotary embedding in one Triton kernel each
    keep_dequantized: Lever  # the frozen 4-bit weights dequantized once and kept
    fp8_matmuls: Lever  # the frozen weights' matmuls in FP8 (kept as float8 instead of the compute dtype)
    block_scales: Lever  # or only their block scales (double quantization), where the weights are not kept
    gradient_checkpointing: Lever
    cuda_graphs: Lever  # training steps replayed from CUDA graphs
    packed_sequences: Lever  # training batches as one row of sentences, attention per sentence (no padding between)
    sdpa_without_cudnn: Lever  # SDPA's shape-agnostic kernels instead of cuDNN's, which re-plans for every shape
    graphed_generation: Lever  # the generative paradigm's decoding steps replayed from CUDA graphs
    bnb_without_syncs: Lever  # bitsandbytes' optimizer step without a synchronization after each parameter
    free_bytes: int | None = None  # the memory the plan was made with

    @property
    def liger_config(self) -> dict | None:
        return dict(liger.CONFIG) if self.liger.on else None

    @property
    def seeded_dropout(self) -> bool:
        """Graphed steps that recompute checkpointed layers: the LoRA dropout masks are keyed by a step seed
        (seeded_dropout.py), and checkpointing does not save the random generators' state."""
        return self.cuda_graphs.on and self.gradient_checkpointing.on

    def batch_shapes(self, spec) -> cuda_graphs.BatchShapes | None:
        return cuda_graphs.batch_shapes(spec.train) if self.cuda_graphs.on else None

    def packed_longest(self, spec) -> int | None:
        """The bound on a packed sentence's length (no training sentence is longer than max_length), or None where
        batches are padded."""
        return spec.train.max_length if self.packed_sequences.on else None

    def facts(self) -> dict:
        """The plan as the record keeps it: {lever: {on, why, detail}}."""
        return {k: v for k, v in asdict(self).items() if isinstance(v, dict)}


def plan(spec, built, device_memory: memory.DeviceMemory) -> AccelPlan:
    """Each lever's decision for this case, in the order their memory depends on each other."""
    case = _Case(spec, built, device_memory.free_bytes())
    fused = case.fused_lora()
    keep = case.keep_dequantized(fused)
    checkpointing = case.gradient_checkpointing(keep)
    return AccelPlan(liger=case.liger(), torch_compile=case.torch_compile(), fused_lora=fused,
                     fused_lora_backward=case.fused_lora_backward(fused), fused_rope=case.fused_rope(),
                     keep_dequantized=keep, fp8_matmuls=case.fp8_matmuls(fused, keep),
                     block_scales=case.block_scales(fused, keep), gradient_checkpointing=checkpointing,
                     cuda_graphs=case.cuda_graphs(checkpointing, fused), packed_sequences=case.packed_sequences(keep),
                     sdpa_without_cudnn=case.sdpa(),
                     graphed_generation=case.graphed_generation(), bnb_without_syncs=case.bnb_without_syncs(),
                     free_bytes=case.free)


class _Case:
    """What the decisions read: the spec's switches, the model as built, the memory left on its device."""

    def __init__(self, spec, built, free: int | None):
        self.spec, self.t, self.built, self.free = spec, spec.train, built, free
        self.cuda = torch.cuda.is_available()
        self.base = built.transformers_model  # None where the backend wraps the model in one of its own
        self.dtype = compute_dtype(spec)
        self.layers = lora_kernels.fused_layers(built.model)
        self.bases = [layer.get_base_layer() for layer in self.layers]
        self.device = next(built.model.parameters()).device

    def not_ours(self, asked: bool) -> str | None:
        """Why one of nerbench's own levers is off before anything else is looked at, or None."""
        if not asked:
            return "not asked for"
        if self.built.backend.own_kernels or self.base is None:
            return f"the {self.built.backend.name} backend has its own kernels"
        return None

    def liger(self) -> Lever:
        """CUDA, liger-kernel installed and knowing the model type; compiled layers get inductor's fusions instead."""
        why = self.fused_kernels_off(self.t.fused_kernels)
        if why is None:
            known = liger.model_type_known(self.base.config.model_type)
            why = "liger-kernel not installed" if known is None else None if known else (
                f"{self.base.config.model_type} unknown to liger-kernel")
        return Lever(why is None, why or "asked for", "rms_norm, swiglu" if why is None else "")

    def torch_compile(self) -> Lever:
        why = self.not_ours(self.t.torch_compile)
        if why is not None:
            return Lever(False, why)
        blocks = compiling.repeated_blocks(self.base)
        if not blocks:
            raise ValueError(f"{self.spec.name}: torch_compile found no repeated layers to compile")
        return Lever(True, "asked for", f"{len(blocks)} x {type(blocks[0]).__name__}")

    def fused_lora(self) -> Lever:
        why = self.not_ours(self.t.fused_lora)
        if why is None and self.t.torch_compile:
            why = "torch.compile fuses instead"
        if why is None and not self.layers:
            why = "no LoRA projections"
        return Lever(why is None, why or "asked for", f"{len(self.layers)} projections" if why is None else "")

    def fused_kernels_off(self, asked: bool) -> str | None:
        """Why a lever of fused GPU kernels (liger's, nerbench's Triton kernels) is off before its own conditions are
        looked at, or None."""
        return self.not_ours(asked) or ("no CUDA" if not self.cuda else None) or (
            "torch.compile fuses instead" if self.t.torch_compile else None)

    def triton_off(self, asked: bool) -> str | None:
        """Why one of nerbench's Triton kernels is off before its own conditions are looked at, or None."""
        why = self.fused_kernels_off(asked)
        if why is None and importlib.util.find_spec("triton") is None:
            why = "Triton not installed"
        return why

    def fused_lora_backward(self, fused: Lever) -> Lever:
        why = self.triton_off(self.t.fused_lora_backward) or ("needs fused LoRA" if not fused.on else None) or (
            "no LoRA dropout" if not self.spec.lora or not self.spec.lora.dropout else None)
        if why is None:
            from .triton_kernels import MAX_RANK  # (imports Triton: only where it is installed)

            if self.spec.lora.r > MAX_RANK:
                why = f"LoRA rank over {MAX_RANK}"
        return Lever(why is None, why or "asked for")

    def fused_rope(self) -> Lever:
        """Where q and the rotary tables share a dtype (:meth:`rotary_promoted`): the kernel takes one."""
        why = self.triton_off(self.t.fused_rope) or rope.unsupported(self.base) or self.rotary_promoted()
        return Lever(why is None, why or "asked for")

    def rotary_promoted(self) -> str | None:
        """Why q would leave the rotary embedding in another dtype than the compute dtype, or None: weights kept in
        another dtype than the one matmuls run in (a full fine-tune's float32 under bf16) give float32 rotary tables,
        which transformers' function promotes q and k to."""
        weights = weights_dtype(self.spec)
        return f"{dtype_name(weights)} weights, {dtype_name(self.dtype)} compute" if weights != self.dtype else None

    def room(self) -> int | None:
        """The memory left beside a step's activations without checkpointing (None where it cannot be known)."""
        if self.base is None:
            return None
        return memory.room_beside_activations(self.base.config, memory.tokens_per_step(self.t), self.free,
                                              torch.finfo(self.dtype).bits // 8,
                                              lm_head=self.spec.paradigm == "generative")

    def kept_bytes(self) -> int:
        return lora_kernels.dequantized_bytes(self.bases, self.dtype)

    def keep_dequantized(self, fused: Lever) -> Lever:
        """Only where the weights fit beside the activations without checkpointing: keeping them must never turn
        checkpointing on, which costs more than dequantizing."""
        setting, need = self.t.keep_dequantized, self.kept_bytes()
        if not fused.on:
            return Lever(False, "needs fused LoRA")
        if not need:
            return Lever(False, "no 4-bit weights")
        if not lora_kernels.keep_weights(setting, self.bases, self.dtype, self.room()):
            return Lever(False, "does not fit beside the activations" if setting == "auto" else "not asked for")
        return Lever(True, "asked for" if setting is True else "fits beside the activations",
                     f"{dtype_name(self.dtype)}, {need / 1e9:.1f} GB")

    def fp8_matmuls(self, fused: Lever, keep: Lever) -> Lever:
        """Where asked for, on FP8 tensor cores with Triton (the rounding pass), with fused LoRA and bf16 compute, and
        only in the place of 4-bit weights kept dequantized: their float8 copies take the memory of the bf16 copy,
        which the memory rules have made room for (float8 copies of 16-bit weights would be memory no rule counted).
        "auto": on Hopper GPUs, for the projections large enough to gain (fp8.pays)."""
        setting = self.t.fp8_matmuls
        shapes = lora_kernels.frozen_shapes(self.bases)
        takes = fp8.chooser(setting)
        chosen = [s for s in shapes if takes(s)]
        why = self.triton_off(setting) or ("needs fused LoRA" if not fused.on else None)
        if why is None and self.dtype != torch.bfloat16:  # torch._scaled_mm writes rowwise-scaled products in bf16
            why = f"{dtype_name(self.dtype)} compute"
        if why is None and not keep.on:
            why = "needs 4-bit weights kept dequantized"
        if why is None and not chosen:
            why = f"auto: no projection with both dimensions of at least {fp8.PAYS_FROM}"
        why = why or fp8.unsupported(chosen, self.device, auto=setting == "auto")  # last: it tries a matmul on the GPU
        if why is not None:
            return Lever(False, why)
        moved = sum(s.numel() for s in chosen) * self.dtype.itemsize  # two float8 layouts in place of one bf16 copy
        return Lever(True, "asked for" if setting is True else "auto: large projections on a Hopper GPU",
                     f"e4m3, rowwise scales, {len(chosen)} of {len(shapes)} projections, {moved / 1e9:.1f} GB in "
                     f"place of their {dtype_name(self.dtype)} copy")

    def block_scales(self, fused: Lever, keep: Lever) -> Lever:
        """The 4-bit weights' block scales dequantized once (where the weights themselves are not kept)."""
        if not fused.on or keep.on or not any(getattr(b.weight, "quant_state", None) for b in self.bases):
            return Lever(False, "needs fused LoRA" if not fused.on else "weights kept whole" if keep.on
                         else "no 4-bit weights")
        kept = lora_kernels.keep_scales(self.bases, self.free)
        return Lever(kept, "fit in a twentieth of the free memory" if kept else "over a twentieth of the free memory")

    def room_left(self, keep: Lever) -> int | None:
        """The room beside the activations (:meth:`room`) less the weights kept dequantized, where they are."""
        room = self.room()
        return room - self.kept_bytes() if room is not None and keep.on else room

    def gradient_checkpointing(self, keep: Lever) -> Lever:
        setting = self.t.gradient_checkpointing
        if self.built.backend.own_kernels or self.base is None:  # decided when it loaded: its own, for true and auto
            return Lever(setting is not False, f"the {self.built.backend.name} backend's own")
        on = memory.use_checkpointing(setting, self.room_left(keep))
        return Lever(on, "asked for" if setting != "auto" else "activations do not fit" if on else "activations fit")

    def cuda_graphs(self, checkpointing: Lever, fused: Lever) -> Lever:
        """Not with torch.compile (its own graphs would nest). With checkpointing only where the LoRA dropout is
        nerbench's (fused LoRA, seeded by step: torch's saving of random states cannot be recorded) and nothing else
        in the layers draws random numbers."""
        why = (self.not_ours(self.t.cuda_graphs) or ("no CUDA" if not self.cuda else None)
               or ("torch.compile" if self.t.torch_compile else None))
        if why is None and checkpointing.on:
            if not fused.on:
                why = "gradient checkpointing without fused LoRA"
            elif not lora_kernels.all_plain(self.built.model):
                why = "gradient checkpointing with LoRA layers fused LoRA does not compute (peft's dropout)"
            elif len(self.layers) > seeded_dropout.MAX_SALTS:
                why = f"gradient checkpointing with {len(self.layers)} LoRA projections, over seeded dropout's keys"
            elif other := seeded_dropout.other_dropout(compiling.repeated_blocks(self.base), self.base.config):
                why = f"gradient checkpointing with {other}"
        detail = "checkpointed layers, LoRA dropout seeded by step" if why is None and checkpointing.on else ""
        return Lever(why is None, why or "asked for", detail)

    def packed_sequences(self, keep: Lever) -> Lever:
        """CUDA with torch's variable-length attention, in a 16-bit compute dtype; the head paradigm; a model whose
        attention packing can serve (packing.unsupported); the kernel's backward buffer beside the activations and
        the kept weights without checkpointing, so that packing never turns checkpointing on (it is decided after)."""
        why = (self.not_ours(self.t.packed_sequences) or ("no CUDA" if not self.cuda else None)
               or ("torch has no varlen_attn" if not packing.available() else None)
               or ("generative paradigm" if self.spec.paradigm == "generative" else None)
               or self.packed_dtype_off() or packing.unsupported(self.base)
               or packing.fits(self.base.config, self.t, self.room_left(keep)))
        return Lever(why is None, why or "asked for")

    def packed_dtype_off(self) -> str | None:
        """The kernel takes bf16 and fp16, and q must reach it in the compute dtype (:meth:`rotary_promoted`, as for the
        RoPE kernel)."""
        if self.dtype not in packing.KERNEL_DTYPES:
            return f"{dtype_name(self.dtype)} compute"
        return self.rotary_promoted()

    def graphed_generation(self) -> Lever:
        why = ("head paradigm" if self.spec.paradigm != "generative" else self.not_ours(self.t.graphed_generation)
               or ("no CUDA" if not self.cuda else None))
        return Lever(why is None, why or "asked for")

    def bnb_without_syncs(self) -> Lever:
        """On CUDA, for bitsandbytes' unpaged optimizers (the training recipe applies it around the Trainer's run)."""
        why = ("not asked for" if not self.t.bnb_without_syncs else "no CUDA" if not self.cuda
               else bnb_step.unsupported(self.t.optimizer))
        return Lever(why is None, why or "asked for")

    def sdpa(self) -> Lever:
        return Lever(self.cuda, "every batch shape would re-plan cuDNN's kernel" if self.cuda else "no CUDA")


def decoder(accel: AccelPlan, spec, device_memory: memory.DeviceMemory) -> "graphed_generation.GraphedGreedy | None":
    """The generative paradigm's greedy decoding where it is planned (else the task uses transformers' generate)."""
    if not accel.graphed_generation.on:
        return None
    return graphed_generation.GraphedGreedy(spec.train.eval_batch_size, device_memory)


def apply(accel: AccelPlan, spec, built) -> None:
    """Install the levers that change the model itself, as planned."""
    if accel.sdpa_without_cudnn.on:
        torch.backends.cuda.enable_cudnn_sdp(False)
    if accel.packed_sequences.on:
        packing.install(built.transformers_model)
    if accel.torch_compile.on:
        compiling.compile_layers(built.transformers_model)
    restore()  # whatever an earlier case of this process left
    if accel.fused_rope.on:
        rope.install(built.transformers_model)
    if accel.fused_lora.on:
        keep = compute_dtype(spec) if accel.keep_dequantized.on else None
        seed = seeded_dropout.DropoutSeed(next(built.model.parameters()).device) if accel.seeded_dropout else None
        fp8_for = fp8.chooser(spec.train.fp8_matmuls) if accel.fp8_matmuls.on else None  # as the plan counted them
        lora_kernels.install(built.model, keep, accel.block_scales.on, seed, accel.fused_lora_backward.on, fp8_for)
        built.model.nerbench_dropout_seed = seed  # drawn at the start of every graphed step (cuda_graphs.py)


def restore() -> None:
    """Undo what :func:`apply` changed for the whole process rather than the model (the rotary embedding's swap in
    the model's modeling module; FP8's last rounding, held for the next projection): before a case's levers are
    applied, and when the case ends."""
    rope.restore_all()
    fp8.forget_rounding()
