"""The hf backend: transformers + peft + bitsandbytes, on CPU or GPU.

One function per concern, each driven by a spec field:
  location  (hub id, folder, package:NAME/path, GGUF file)  -> :mod:`.locations`
  method    (full, lora, qlora)                              -> :func:`quantization_config`, :func:`add_lora`
  attention (causal, bidirectional[, last k])                -> :mod:`.attention`
  paradigm  (head, generative)                               -> :func:`model_class`, :func:`lora_config`

The generative paradigm loads the causal LM itself (its ``lm_head`` writes the answer) and keeps transformers' own
causal attention with its padding mask (generation pads on the left, which :mod:`.attention`'s hooks do not allow
for). Under LoRA and QLoRA it trains the adapter alone: the LM head stays frozen, and out of 4-bit quantization.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..options import RunOptions
from ..precision import compute_dtype, weights_dtype
from ..specs import RANDOM, ModelSpec
from . import attention
from .base import HEAD_NAMES, Backend, Built, describe, head_name, label_maps
from .locations import loading, weights_location


def upcast_trainable(model: nn.Module) -> None:
    """LoRA weights and the head are updated by the optimizer: keep them in float32 under bf16 autocast."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def cast_head_input(model: nn.Module, head: str) -> None:
    """The trained head is float32 (upcast_trainable) and reads bf16 hidden states: cast its input as peft does
    for LoRA layers. Under autocast (training, nerbench's prediction) this changes nothing; without it (a saved
    case called directly) the head would fail on mixed dtypes."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and head in name.split(".") and module.weight.dtype == torch.float32:
            module.register_forward_pre_hook(lambda m, args: (args[0].to(m.weight.dtype), *args[1:]))


LM_HEAD = "lm_head"  # the generative paradigm's head: the causal LM's own output layer


def generative(spec: ModelSpec) -> bool:
    return spec.paradigm == "generative"


def quantization_config(spec: ModelSpec):
    """NF4 with double quantization for qlora; the head stays in full precision (and out of LoRA)."""
    if spec.method != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(spec),
        # naming modules replaces transformers' default list, which is what keeps a causal LM's lm_head unquantized
        llm_int8_skip_modules=[LM_HEAD] if generative(spec) else list(HEAD_NAMES),
    )


def model_class(spec: ModelSpec):
    """A token classifier (head paradigm) or the causal LM (generative)."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    return AutoModelForCausalLM if generative(spec) else AutoModelForTokenClassification


def add_lora(model: nn.Module, spec: ModelSpec, head: str) -> nn.Module:
    """LoRA on the spec's projections; a token-classification head is trained in full and saved with the adapter
    (the generative paradigm's lm_head stays frozen)."""
    from peft import get_peft_model

    # No peft prepare_model_for_kbit_training for QLoRA: peft freezes the base itself, and that function's float32
    # upcast of the unquantized weights is what we avoid. Measured on Qwen1.5-7B (H100, torch.profiler,
    # docs/PERFORMANCE.md): float32 norm weights make every norm output float32, so each 4-bit matmul casts its
    # dequantized weight to float32 and autocast casts it back, a tenth of the GPU time; and a float32 copy of
    # the embedding table costs 3 GB on Qwen1.5-14B. The norms compute in float32 inside anyway, and the trained
    # weights (LoRA, head) are float32 (upcast_trainable).
    model = get_peft_model(model, lora_config(spec, head))
    upcast_trainable(model)
    if not generative(spec):
        cast_head_input(model, head)
    return model


def lora_config(spec: ModelSpec, head: str):
    from peft import LoraConfig, TaskType

    lora = spec.lora
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM if generative(spec) else TaskType.TOKEN_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        # the generative paradigm writes with the pretrained LM head: no second trained copy of a vocabulary-wide layer
        modules_to_save=None if generative(spec) else [head],
    )


def keep_cpu_weights_trainable(model: nn.Module) -> None:
    """Stop bitsandbytes (0.50) from repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, the first forward pass in eval mode without gradients (our dev scoring)
    repacks each Linear4bit weight in place, and the next training step then fails ("a view of a leaf
    Variable that requires grad is being used in an in-place operation"). Training resumes after every
    dev evaluation here, so the repack is switched off; GPUs are not affected.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def tokenizer_for(location: str, opts: RunOptions | None = None):
    from transformers import AutoTokenizer

    if location.startswith(RANDOM):
        from .synthetic import tokenizer_location

        location = tokenizer_location(location, opts)
    tok = AutoTokenizer.from_pretrained(location)
    tok.padding_side = "right"  # labels are padded on the right too; causal models never see pads this way
    if tok.pad_token is None:  # decoders ship without one; padding is masked, so any known token serves
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def pretrained_model(spec: ModelSpec, labels: list[str], location: str, opts: RunOptions) -> nn.Module:
    labelled = {} if generative(spec) else label_maps(labels)  # a causal LM writes its labels as text
    if location.startswith(RANDOM):  # --synthetic: built layer by layer on the device, nothing on disk
        from .synthetic import random_model

        model = random_model(location, labelled, weights_dtype(spec), quantization_config(spec), opts,
                             causal_lm=generative(spec))
    else:
        with loading(spec, location):
            model = model_class(spec).from_pretrained(
                location,
                **labelled,
                dtype=weights_dtype(spec),
                quantization_config=quantization_config(spec),
                device_map={"": 0} if torch.cuda.is_available() else None,
                attn_implementation="sdpa",
            )
    if spec.method == "qlora":
        keep_cpu_weights_trainable(model)  # also keeps a reloaded model's numerics those of training
    return model


class HfBackend(Backend):
    name = "hf"

    def load(self, spec: ModelSpec, labels: list[str], opts: RunOptions) -> Built:
        location = weights_location(spec, opts.cache_dir)
        with loading(spec, location):
            tokenizer = tokenizer_for(location, opts)
        model = pretrained_model(spec, labels, location, opts)
        if tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
        head = LM_HEAD if generative(spec) else head_name(model)
        unmasked = set_attention(model, spec)
        if spec.method in ("lora", "qlora"):
            model = add_lora(model, spec, head)
        return Built(model, tokenizer, self, head, describe(model, spec, self.name, unmasked))

    def load_saved(self, folder: Path, spec: ModelSpec, labels: list[str], opts: RunOptions) -> Built:
        """The base model as its spec says, then the saved adapter and head on top (or the whole saved model)."""
        from peft import PeftModel

        full = spec.method == "full"
        model = pretrained_model(spec, labels, str(folder) if full else weights_location(spec, opts.cache_dir), opts)
        set_attention(model, spec)
        if generative(spec):  # the adapter alone: the LM head was never trained
            model = model if full else PeftModel.from_pretrained(model, folder)
            return Built(model, tokenizer_for(str(folder)), self, LM_HEAD, {})
        head = head_name(model)
        if not full:
            getattr(model, head).float()  # the head was trained in float32 (upcast_trainable); load it as such
            model = PeftModel.from_pretrained(model, folder)
            cast_head_input(model, head)
        return Built(model, tokenizer_for(str(folder)), self, head, {})


def set_attention(model: nn.Module, spec: ModelSpec) -> int:
    """The spec's attention mode (token classifiers of decoders); returns how many layers attend both ways.

    Generative models keep transformers' causal attention and padding mask untouched: generation pads on the left,
    and :mod:`.attention` drops the padding mask of causal layers, which is right for right padding only.
    """
    if not spec.is_decoder or generative(spec):
        return 0
    return attention.apply(model, spec.attention, spec.bidirectional_layers)
