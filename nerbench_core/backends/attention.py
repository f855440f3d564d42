"""Attention mode for decoders: the causal mask removed in all layers, or in the last k.

Follows LS-unLLaMA (Li et al., 2023) and Dukic & Snajder (2024): a decoder that sees the words to its
right tags them better. Done with transformers' own machinery rather than copied model code:

* each unmasked layer's attention module gets ``is_causal = False`` (the flag SDPA and flash attention read);
* a pre-hook on the backbone keeps the 2-D padding mask of the current batch, and a pre-hook on each
  unmasked layer replaces the causal mask it is handed by ``masking_utils.create_bidirectional_mask``
  built from that padding mask, for whichever attention implementation the model uses.

The causal layers get no mask at all: batches are padded on the right (``modeling.tokenizer_for``), so a real
token's causal window holds no pad, and the pads' own outputs are never labelled. Without a mask, SDPA runs its
causal flash kernel; with one, it falls back to a masked kernel over a 4-D mask (the masked attention backward was
8% of a Qwen1.5-7B step's GPU time, docs/PERFORMANCE.md). So the backbone is handed no padding mask, and each
causal layer is handed no mask either: while a CUDA graph is being recorded transformers builds a 4-D causal mask
even without padding (it cannot ask the GPU whether the batch is packed or padded then).

Hooks are not saved with a checkpoint; :func:`apply` is called again from the spec when a model is reloaded.
"""
from __future__ import annotations

from torch import nn
from transformers.masking_utils import create_bidirectional_mask


def decoder_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The backbone (Qwen2Model, LlamaModel, ...) and its list of decoder layers, through any wrappers."""
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and hasattr(module, "config") and len(layers) > 0:
            return module, layers
    raise ValueError(f"{type(model).__name__}: no decoder layers found (expected a `.layers` ModuleList)")


def apply(model: nn.Module, mode: str, last_k: int | None = None) -> int:
    """Set the attention mode; returns how many layers attend in both directions."""
    if mode not in ("causal", "bidirectional"):
        raise ValueError(f"attention mode {mode!r}: expected 'causal' or 'bidirectional'")
    try:
        backbone, layers = decoder_layers(model)
    except ValueError:
        if mode == "causal":  # another layout (GPT-2's `h`, ...): causal layers keep their padding mask
            return 0
        raise
    n = 0 if mode == "causal" else len(layers) if last_k is None else last_k
    if mode == "bidirectional" and not 0 < n <= len(layers):
        raise ValueError(f"bidirectional_layers={last_k}: the model has {len(layers)} layers")
    state: dict = {}

    def keep_padding_mask(_module, args, kwargs):
        state["padding"] = kwargs.get("attention_mask")  # for the bidirectional layers
        kwargs["attention_mask"] = None  # the causal layers need none (right padding: the module's docstring)
        return args, kwargs

    def causal(layer_module, args, kwargs):
        kwargs["attention_mask"] = None  # SDPA's is_causal kernel instead (the module's docstring)
        return args, kwargs

    def unmask(layer_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        kwargs["attention_mask"] = create_bidirectional_mask(
            config=backbone.config, inputs_embeds=hidden, attention_mask=state.get("padding")
        )
        return args, kwargs

    backbone.register_forward_pre_hook(keep_padding_mask, with_kwargs=True)
    for layer in list(layers)[:len(layers) - n]:
        layer.register_forward_pre_hook(causal, with_kwargs=True)
    for layer in list(layers)[len(layers) - n:]:
        attn = getattr(layer, "self_attn", None)
        if attn is None or not hasattr(attn, "is_causal"):
            raise ValueError(f"{type(layer).__name__}: no self_attn.is_causal to switch off")
        attn.is_causal = False
        layer.register_forward_pre_hook(unmask, with_kwargs=True)
    return n
