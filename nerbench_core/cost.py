"""What a case cost: peak memory, FLOPs per token and model FLOPs utilization (MFU).

FLOPs per trained token (PaLM appendix B convention): ``k * N + 12 * L * d * T`` where N is the number of
non-embedding parameters, k = 6 for a full fine-tune (forward 2N, backward 4N) and k = 4 for LoRA on frozen
weights (no weight gradients for the frozen matrices), L layers, d hidden size and T the mean sequence
length (attention scores and the weighted sum, forward and backward). MFU is achieved FLOP/s over the
GPU's dense bf16 peak from :data:`GPU_PEAK_BF16_TFLOPS` (override with ``--gpu-peak-tflops``).
"""
from __future__ import annotations

import functools
import gc
import resource
import sys

import torch
from torch import nn

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, in TFLOP/s; matched by substring
# of the device name, first match wins (so "H100 PCIe" precedes "H100").
GPU_PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A6000": 155.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "V100": 125.0,
    "T4": 65.0,
}


def gpu_info() -> dict | None:
    """The GPU a case ran on, as its record keeps it. Beside the name, what tells cards of one name apart: the SM
    count (a MIG slice has fewer) and the power limit and top SM clock nvidia-smi reports (H200s of one name ran the
    same cases up to 30% apart here, docs/PERFORMANCE.md)."""
    if not torch.cuda.is_available():
        return None
    i = torch.cuda.current_device()
    p = torch.cuda.get_device_properties(i)
    return {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
            "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
            **(gpu_limits(f"GPU-{p.uuid}") or {})}


@functools.lru_cache(maxsize=None)
def gpu_limits(card: str) -> dict | None:
    """``{"power_limit_w", "max_sm_clock_mhz"}`` of the card (an nvidia-smi ``-i`` id), or None where nvidia-smi is
    missing, fails or does not answer within seconds. Asked once a process (a record per case reads it)."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "-i", card, "--query-gpu=power.limit,clocks.max.sm",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_limits(out.stdout)


def parse_limits(text: str) -> dict | None:
    """nvidia-smi's ``power.limit,clocks.max.sm`` line ("700.00, 1980"); a field it cannot read ("[N/A]") is None."""
    fields = [f.strip() for f in text.strip().splitlines()[0].split(",")] if text.strip() else []
    if len(fields) != 2:
        return None

    def number(field: str) -> float | None:
        try:
            return float(field)
        except ValueError:
            return None

    return {"power_limit_w": number(fields[0]), "max_sm_clock_mhz": number(fields[1])}


def gpu_peak_flops(name: str | None, override_tflops: float | None = None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if not name:
        return None
    for key, tflops in GPU_PEAK_BF16_TFLOPS.items():
        if key.lower() in name.lower():
            return tflops * 1e12
    return None


def release_memory() -> None:
    """Free what reference cycles still hold (a model and its hooks) and give the GPU's cached blocks back."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak_memory() -> float | None:
    """Start a case's peaks: the GPU's, and on Linux the process's resident high-water mark (writing 5 to
    /proc/self/clear_refs resets VmHWM), so that a case does not report an earlier, larger case's peak.

    What an earlier case left is let go first: its model where reference cycles (modules and their hooks) would keep
    it until the collector runs, perhaps in the middle of this case; and cuBLAS's workspaces, which it allocates for
    each stream it runs on (one for cuBLAS, one for cuBLASLt: 32 MiB each on an H200) and keeps, so that each case's
    side stream for CUDA graphs added two for the rest of the process. Only between cases: a captured CUDA graph
    holds its workspace's address, and no graph outlives the case that captured it. Returns the GiB of GPU memory
    still allocated then (None without CUDA), which this case's peak includes."""
    held = None
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)  # torch's own, private
        if clear_workspaces is not None:
            clear_workspaces()
    release_memory()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated() / 2**30
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return held


def _peak_rss_bytes() -> int:
    """The resident high-water mark since the last reset (Linux: VmHWM), else the process's lifetime one."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def peak_memory() -> dict:
    """GPU peaks since the last reset; on CPU the process's peak RSS since the case began (Linux)."""
    if torch.cuda.is_available():
        return {"peak_gpu_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
                "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}
    return {"peak_rss_gib": _peak_rss_bytes() / 2**30}


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


def non_embedding_parameters(model: nn.Module) -> int:
    total, _ = count_parameters(model)
    emb = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return total - emb


def flops_per_token(n_params: int, method: str, layers: int, hidden: int, mean_length: float) -> float:
    k = 6 if method == "full" else 4
    return k * n_params + 12 * layers * hidden * mean_length


def model_shape(model: nn.Module) -> tuple[int, int]:
    cfg = getattr(model, "config", None)
    while cfg is None and hasattr(model, "base_model"):
        model = model.base_model
        cfg = getattr(model, "config", None)
    return int(getattr(cfg, "num_hidden_layers", 0) or 0), int(getattr(cfg, "hidden_size", 0) or 0)
