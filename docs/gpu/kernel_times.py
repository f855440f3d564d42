"""GPU time of nerbench's Triton kernels against the torch operations they replace, and of the frozen weights' matmuls
in bf16 and in FP8, at the seed decoders' shapes (a 1,024-token batch): each side recorded in a CUDA graph of 20
repetitions and replayed, so that launches do not count. Run on a GPU machine: python docs/gpu/kernel_times.py
(docs/PERFORMANCE.md quotes it)."""
import torch
import triton
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

from nerbench_core.accel import fp8
from nerbench_core.accel import triton_kernels as tk

REPEATS = 20


def gpu_ms(fn) -> float:
    """GPU milliseconds of one ``fn()``, from replays of a graph of REPEATS calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPEATS):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (10 * REPEATS)


def lora_grad_times(tokens: int, n: int, r: int = 16, p: float = 0.05):
    dt, dev = torch.bfloat16, "cuda"
    gx = torch.randn(tokens, n, dtype=dt, device=dev)
    gd = torch.randn(tokens, r, dtype=dt, device=dev)
    a = torch.randn(r, n, dtype=dt, device=dev)
    mask = torch.rand(tokens, n, device=dev) >= p
    seed = torch.tensor([7], dtype=torch.int64, device=dev)

    def eager():  # lora_kernels.LoraProjection.backward without the kernel
        gx.add_(torch.mm(gd, a).mul_(mask), alpha=1.0 / (1.0 - p))

    def eager_seeded():
        gx.add_(tk.keyed_dropout(torch.mm(gd, a), p, seed, 3, 4096))

    return {"torch (mm, mask, add)": gpu_ms(eager),
            "kernel, stored mask": gpu_ms(lambda: tk.masked_lora_grad_(gx, gd, a, p, mask=mask)),
            "torch, seeded mask": gpu_ms(eager_seeded),
            "kernel, seeded mask": gpu_ms(lambda: tk.masked_lora_grad_(gx, gd, a, p, seed=seed, salt=3, salts=4096))}


def frozen_matmul_times(tokens: int, n_in: int, n_out: int):
    """A frozen weight's two matmuls in a training step, x W^T and g W: bf16 against FP8 (fp8_matmuls, rounding of x
    and g included)."""
    dt, dev = torch.bfloat16, "cuda"
    w = torch.randn(n_out, n_in, dtype=dt, device=dev)
    x, g = torch.randn(tokens, n_in, dtype=dt, device=dev), torch.randn(tokens, n_out, dtype=dt, device=dev)
    w8 = fp8.Fp8Weight(w)
    # x.view(...): another tensor object each call, so that FP8's rounding of x is not shared between calls (it is
    # only between projections that read one x: q, k and v; gate and up)
    return {"bf16": gpu_ms(lambda: (x @ w.t(), g @ w)),
            "FP8": gpu_ms(lambda: (w8.linear(x.view(x.shape), dt), w8.grad_input(g, dt))),
            "of it rounding x": gpu_ms(lambda: fp8.rowwise(x))}


def rotary_times(rows: int, positions: int, heads: int, dim: int):
    dt, dev = torch.bfloat16, "cuda"
    q = torch.randn(rows, positions, heads, dim, dtype=dt, device=dev).transpose(1, 2)
    k = torch.randn(rows, positions, heads, dim, dtype=dt, device=dev).transpose(1, 2)
    freqs = torch.arange(positions, device=dev)[:, None] / (10000 ** (torch.arange(0, dim, 2, device=dev) / dim))
    emb = torch.cat([freqs, freqs], -1)[None].expand(rows, -1, -1)
    cos, sin = emb.cos().to(dt), emb.sin().to(dt)
    qg, kg = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    gq, gk = torch.randn_like(q), torch.randn_like(k)

    def hf():
        qo, ko = apply_rotary_pos_emb(qg, kg, cos, sin)
        torch.autograd.backward((qo, ko), (gq, gk))

    def kernel():
        tk.rotary(q, cos, sin), tk.rotary(k, cos, sin)
        tk.rotary(gq, cos, sin, backward=True), tk.rotary(gk, cos, sin, backward=True)

    return {"transformers (forward + backward)": gpu_ms(hf), "kernel (forward + backward)": gpu_ms(kernel)}


def main():
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    for name, n in (("7B q/k/v/o/gate/up input", 4096), ("7B down input", 11008), ("0.5B hidden", 1024),
                    ("0.5B down input", 2816)):
        print(f"LoRA input gradient, 1,024 tokens, {name} ({n}):",
              ", ".join(f"{k} {v * 1000:.1f} us" for k, v in lora_grad_times(1024, n).items()))
    for model, hidden, inner in (("14B", 5120, 13696), ("7B", 4096, 11008), ("4B", 2560, 6912), ("1.8B", 2048, 5504),
                                 ("0.5B", 1024, 2816)):
        for name, n_in, n_out in ((f"{model} q", hidden, hidden), (f"{model} gate", hidden, inner),
                                  (f"{model} down", inner, hidden)):
            print(f"Frozen weight's forward and input-gradient matmuls, 1,024 tokens, {name} ({n_in} -> {n_out}):",
                  ", ".join(f"{k} {v * 1000:.1f} us" for k, v in frozen_matmul_times(1024, n_in, n_out).items()))
    for name, heads, dim in (("7B", 32, 128), ("0.5B", 16, 64)):
        print(f"RoPE of q and k, 32 x 32 positions, {name} ({heads} heads of {dim}):",
              ", ".join(f"{k} {v * 1000:.1f} us" for k, v in rotary_times(32, 32, heads, dim).items()))


if __name__ == "__main__":
    main()
