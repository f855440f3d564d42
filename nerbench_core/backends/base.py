"""What every backend is: load a spec's model, reload a saved case, say what it supports; and what it hands back.

A backend turns a :class:`ModelSpec` into a :class:`Built` (model, tokenizer, facts for the record). Everything after
loading (attention mode, LoRA, the speed levers, the Trainer) is the one common path; a backend only says, through
its class attributes, which of nerbench's levers apply to its models.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from ..cost import count_parameters
from ..options import RunOptions
from ..precision import compute_dtype, dtype_name
from ..specs import ModelSpec

HEAD_NAMES = ("score", "classifier")  # token-classification heads of decoders / encoders in transformers
SPEC_FILE = "nerbench_case.json"


class ModelUnavailable(RuntimeError):
    """The model cannot be had here (not installed, offline without a local copy, hub error, no CUDA)."""


@dataclass
class Built:
    model: nn.Module
    tokenizer: Any
    backend: "Backend"
    head: str
    details: dict = field(default_factory=dict)  # what the record should say about how it was built

    @property
    def transformers_model(self):
        """The transformers model itself (inside a peft wrapper), or None where the backend wraps it in a model of
        its own: what the Trainer's transformers-only features (liger-kernel, checkpointing) apply to."""
        from transformers import PreTrainedModel

        model = self.model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return base if isinstance(base, PreTrainedModel) else None


class Backend:
    """One way of loading and training a model. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    # the backend compiles and fuses its own kernels: nerbench's levers (fused LoRA, CUDA graphs, liger,
    # torch.compile) stay off, and it decides gradient checkpointing itself when it loads
    own_kernels: ClassVar[bool] = False

    def check(self, spec: ModelSpec) -> None:
        """Raise ModelUnavailable (cannot run here) or ValueError (cannot run at all) for a spec it cannot serve."""

    def load(self, spec: ModelSpec, labels: list[str], opts: RunOptions) -> Built:
        raise NotImplementedError

    def load_saved(self, folder: Path, spec: ModelSpec, labels: list[str], opts: RunOptions) -> Built:
        raise NotImplementedError

    def save(self, built: Built, folder: Path) -> None:
        """The fine-tuned weights (adapter and head, or the whole model) and the tokenizer."""
        built.model.save_pretrained(folder)
        built.tokenizer.save_pretrained(folder)


def label_maps(labels: list[str]) -> dict:
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}}


def head_name(model: nn.Module) -> str:
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"{type(model).__name__}: no token-classification head named {' or '.join(HEAD_NAMES)}")


def describe(model: nn.Module, spec: ModelSpec, backend: str, bidirectional_layers: int) -> dict:
    """How the model was built, for the record and the table."""
    total, trainable = count_parameters(model)
    dtype = dtype_name(compute_dtype(spec))
    quantization = f"nf4-double-quant, {dtype} compute" if spec.method == "qlora" else f"{dtype} compute"
    return {
        "backend": backend,
        "method": spec.method,
        "paradigm": spec.paradigm,
        "quantization": quantization,
        "attention": spec.attention if spec.is_decoder else "bidirectional (encoder)",
        "bidirectional_layers": bidirectional_layers,
        "lora_r": spec.lora.r if spec.lora else None,
        "params_total": total,
        "params_trainable": trainable,
    }


def choose(spec: ModelSpec) -> tuple[Backend, str]:
    """The backend a spec runs on, and why; it has checked that it can serve the spec."""
    from .registry import AUTO, backend_class

    backend = backend_class(spec.backend)()
    backend.check(spec)
    why = "default (faster than unsloth over three epochs here)" if spec.backend == AUTO else "asked for"
    return backend, why


def build(spec: ModelSpec, labels: list[str], opts: RunOptions) -> Built:
    backend, why = choose(spec)
    built = backend.load(spec, labels, opts)
    built.details["backend_reason"] = why
    return built


def save_case(built: Built, spec: ModelSpec, labels: list[str], folder: str | Path) -> Path:
    """The fine-tuned case and the spec that rebuilds it (:func:`load_case`), written as one folder."""
    from .. import atomic

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic.folder(folder) as tmp:
        built.backend.save(built, tmp)
        (tmp / SPEC_FILE).write_text(json.dumps({"spec": spec.to_dict(), "labels": labels,
                                                 "backend": built.backend.name}, indent=1))
    return folder


def load_case(folder: str | Path, opts: RunOptions) -> Built:
    """Rebuild a saved case: the base model as its spec says, then the saved weights on top."""
    from ..specs import spec_from_dict
    from .registry import backend_class

    folder = Path(folder)
    saved = json.loads((folder / SPEC_FILE).read_text())
    spec, labels = spec_from_dict(saved["spec"], str(folder / SPEC_FILE)), saved["labels"]
    return backend_class(saved.get("backend", "hf"))().load_saved(folder, spec, labels, opts)
