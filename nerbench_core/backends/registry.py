"""The backends' names and where each lives: what `--backend` and a spec's `backend` may say.

A leaf (no torch): specs validate against it and the plugin offers its names before any model code loads. A new
backend is a subclass of :class:`nerbench_core.backends.base.Backend` in a module of its own, and a line here.
"""
from __future__ import annotations

import importlib

BACKENDS = {
    "hf": "nerbench_core.backends.hf:HfBackend",  # transformers + peft + bitsandbytes, CPU or GPU
    "unsloth": "nerbench_core.backends.unsloth:UnslothBackend",  # unsloth's kernels, CUDA only
}
AUTO = "auto"  # = hf: faster than unsloth over three epochs here (docs/PERFORMANCE.md)
CHOICES = (AUTO, *BACKENDS)


def backend_class(name: str):
    """The Backend subclass registered as ``name`` (``auto`` is hf)."""
    module, _, cls = BACKENDS["hf" if name == AUTO else name].partition(":")
    return getattr(importlib.import_module(module), cls)
