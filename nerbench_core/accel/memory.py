"""Whether a training step's activations fit beside the model, which decides ``gradient_checkpointing = "auto"``; and
how many tokens a prediction batch may hold (``prediction_tokens``).

Gradient checkpointing keeps only each layer's input and recomputes the layer in the backward pass: it saves
most activation memory and costs a second forward pass. Where the memory is there, it is pure loss: on one
H100, Qwen1.5-7B QLoRA at 4096-token batches trains at 5,344 tokens/s with it (8.2 GiB) and 8,021 without
(30.0 GiB), the same arithmetic otherwise (docs/PERFORMANCE.md). ``"auto"`` turns it off where the estimate
below, with a margin, fits in the memory left on the device once the model is loaded, and keeps it on where
it does not (a 12 or 24 GB card), so one suite runs fast on a large GPU and still fits a small one.
"""
from __future__ import annotations

from dataclasses import dataclass

# Activation values per token per layer kept for the backward pass of a Llama/Qwen2/BERT-style layer with LoRA
# on every projection: about 12 per hidden unit (attention inputs and outputs, the LoRA inputs after dropout,
# norms, residuals) and 5 per MLP unit (gate, up, their product, the down projection's input); 2 bytes each in
# bf16, 4 in float32. Checked against Qwen1.5-7B, 4096-token batches, bf16, H100: 25.4 GiB estimated, 23.5 GiB
# measured.
PER_HIDDEN_UNIT = 12
PER_MLP_UNIT = 5
MARGIN = 1.25  # estimate error, allocator fragmentation
RESERVE_BYTES = 2 * 2**30  # optimizer states of the trained weights, dequantization buffers, the loss


# Prediction (no gradients) holds one layer's values at a time: its input and the residual, the normed input, q, k, v
# and the attention output (about 8 per hidden unit with FP8's rounded copies) and the MLP's gate, up and their
# product (3 per MLP unit).
PREDICT_PER_HIDDEN_UNIT = 8
PREDICT_PER_MLP_UNIT = 3
# Of the memory new tensors can take after training, what a prediction batch may: half, and on CUDA no more than
# training's own peak left above what is held now, so that prediction does not raise a case's peak (a small card's
# fit is training's) and does not count on the free blocks of CUDA graphs' private pool, which it cannot use.
PREDICT_SHARE = 0.5


def _widths(config) -> tuple[int, int]:
    """A layer's hidden and MLP widths."""
    return config.hidden_size, getattr(config, "intermediate_size", None) or 4 * config.hidden_size


def activation_bytes(config, tokens: int, bytes_per_value: int = 2) -> int:
    """Activation memory of one step of ``tokens`` tokens without gradient checkpointing."""
    hidden, mlp = _widths(config)
    return tokens * config.num_hidden_layers * (PER_HIDDEN_UNIT * hidden + PER_MLP_UNIT * mlp) * bytes_per_value


def prediction_tokens(config, free_bytes: int | None, bytes_per_value: int = 2) -> int | None:
    """The most tokens (padding included) a prediction batch's forward pass has room for in ``free_bytes``, with the
    margin; None where that cannot be known."""
    if getattr(config, "hidden_size", None) is None or free_bytes is None:  # (another config's shape: rows alone)
        return None
    hidden, mlp = _widths(config)
    per_token = (PREDICT_PER_HIDDEN_UNIT * hidden + PREDICT_PER_MLP_UNIT * mlp) * bytes_per_value
    return max(1, int(free_bytes / MARGIN) // per_token)


@dataclass(frozen=True)
class DeviceMemory:
    """The memory this process may plan with on its device: ``cap_gb`` (--gpu-memory) makes a large GPU behave as a
    card of that size, ``shared_by`` (pytest-xdist workers on the same GPU) gives each worker its share."""

    cap_gb: float | None = None
    shared_by: int = 1

    @property
    def cap_bytes(self) -> int | None:
        """The card size to behave as, in bytes (GB as cards are sold: 12 GB = 12e9 bytes)."""
        return int(self.cap_gb * 1e9) if self.cap_gb else None

    def apply_cap(self) -> None:
        """Make CUDA allocations beyond the cap fail in this process, as they would on such a card: a run on a large
        GPU then shows whether a case fits a small one, "auto" deciding as it would there."""
        import torch

        if self.cap_bytes and torch.cuda.is_available():
            total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, self.cap_bytes / total))

    def free_bytes(self) -> int | None:
        """Memory left for this process on its device: its share of the GPU's free memory, capped; on CPU the
        system's available memory (Linux); None where it cannot be known."""
        import torch

        if torch.cuda.is_available():
            free = torch.cuda.mem_get_info()[0] // max(1, self.shared_by)
            return capped(free, self.cap_bytes, torch.cuda.memory_reserved())
        try:
            with open("/proc/meminfo") as f:
                fields = dict(line.split(":", 1) for line in f)
            return int(fields["MemAvailable"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            return None


    def reusable_bytes(self) -> int | None:
        """What new tensors can take: :meth:`free_bytes` and the memory this process's allocator holds unused
        (on CUDA; elsewhere :meth:`free_bytes`)."""
        import torch

        free = self.free_bytes()
        if free is None or not torch.cuda.is_available():
            return free
        return free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()

    def prediction_tokens(self, config, bytes_per_value: int = 2) -> int | None:
        """The most tokens a prediction batch may hold now: :func:`prediction_tokens` of its room (PREDICT_SHARE)."""
        import torch

        reusable = self.reusable_bytes()
        if reusable is None:
            return None
        room = int(reusable * PREDICT_SHARE)
        if torch.cuda.is_available():
            below_peak = torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()
            if below_peak > 0:  # zero before anything has run: the share alone
                room = min(room, below_peak)
        return prediction_tokens(config, room, bytes_per_value)


def capped(free: int, cap: int | None, reserved: int) -> int:
    """Free memory as a card of ``cap`` bytes would have it, this process holding ``reserved`` of it."""
    return free if cap is None else max(0, min(free, cap - reserved))


def logits_bytes(config, tokens: int, bytes_per_value: int = 2) -> int:
    """A language-model head's share of a step (the generative paradigm): the logits over the whole vocabulary, their
    float32 copy in the loss and its gradient."""
    return tokens * config.vocab_size * (bytes_per_value + 4 + 4)


def room_beside_activations(config, tokens: int, free_bytes: int | None, bytes_per_value: int = 2,
                            lm_head: bool = False) -> int | None:
    """Memory left once a step's activations without checkpointing (with the margin and reserve; with ``lm_head``
    the vocabulary's logits too) are set aside from ``free_bytes``; negative where they do not fit, None where it
    cannot be known."""
    if config is None or free_bytes is None:
        return None
    need = activation_bytes(config, tokens, bytes_per_value) + (logits_bytes(config, tokens, bytes_per_value)
                                                                if lm_head else 0)
    return free_bytes - int(need * MARGIN) - RESERVE_BYTES


def use_checkpointing(setting: bool | str, room: int | None) -> bool:
    """The setting itself when it is true or false; for "auto", on unless the activations fit (``room``: what
    :func:`room_beside_activations` leaves, less anything else the plan keeps in memory)."""
    if setting != "auto":
        return bool(setting)
    return room is None or room < 0


def tokens_per_step(train) -> int:
    """The most tokens a training batch holds (padding included): the token budget, else sentences x length."""
    return train.max_tokens_per_batch or train.batch_size * train.max_length
