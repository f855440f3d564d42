"""The exact published shapes of the seed suite's models (bench/architectures.toml), without torch: what
``--synthetic`` builds with random weights, and the sizes the plugin orders cases by."""
from __future__ import annotations

import functools
import tomllib
from pathlib import Path

from .specs import SpecError

ARCHITECTURES = Path(__file__).resolve().parent.parent / "bench" / "architectures.toml"


@functools.cache
def architectures(path: Path = ARCHITECTURES) -> dict[str, dict]:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def architecture(name: str) -> dict:
    arch = architectures().get(name)
    if not arch:
        raise SpecError(f"architecture {name!r} is not in {ARCHITECTURES} (known: {', '.join(architectures())})")
    return dict(arch)


def estimated_parameters(name: str | None) -> int:
    """Rough parameter count of an architecture (embeddings + attention + MLP), for ordering cases by size."""
    arch = architectures().get(name or "")
    if not arch:
        return 0
    d, layers, inter, vocab = arch["hidden_size"], arch["num_hidden_layers"], arch["intermediate_size"], arch["vocab_size"]
    heads = arch["num_attention_heads"]
    kv = arch.get("num_key_value_heads", heads) * (d // heads)
    mlp = (3 if arch["model_type"] != "bert" else 2) * d * inter  # gated MLPs have three matrices
    return vocab * d + layers * (2 * d * d + 2 * d * kv + mlp)
