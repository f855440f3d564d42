"""Regional torch.compile (``torch_compile = true``): each repeated layer (decoder or encoder block) compiled in place.

Why regional: the layers of a model are instances of one class, so dynamo compiles the first and reuses that
code for the others (PyTorch's "regional compilation" recipe), where the whole model would take minutes; and
compiling in place (``Module.compile``) keeps every parameter's name, so peft saving, the best-epoch weights
and the Trainer's checkpoints see the same model. ``dynamic=True``: length-sorted batches bring a new (batch,
length) shape at almost every step; one symbolic-shape graph serves them all.

Off by default, as measured (docs/PERFORMANCE.md, Qwen1.5-0.5B QLoRA on an H100): a layer is compiled in up to
six variants (the first layer's input needs no gradient, batches without padding pass no mask, prediction runs
without gradients), 15-20 s each, and the compiled steps ran slower than the eager ones (5,505 against 6,917
tokens/s). It works on CPU and GPU with LoRA, 4-bit weights, both attention modes and gradient checkpointing.
"""
from __future__ import annotations

from torch import nn


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The layers of every ModuleList whose members are all of one class (a model's stack of blocks)."""
    blocks: list[nn.Module] = []
    seen: set[int] = set()
    for module in model.modules():
        if id(module) in seen:
            continue
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            blocks.extend(module)
            seen.update(id(m) for layer in module for m in layer.modules())
    return blocks


def compile_layers(model: nn.Module) -> str:
    """Compile ``model``'s repeated blocks in place; returns what was done, for the record."""
    blocks = repeated_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__}: torch_compile found no repeated layers to compile")
    for block in blocks:
        block.compile(dynamic=True)
    return f"torch.compile of {len(blocks)} x {type(blocks[0]).__name__}"
