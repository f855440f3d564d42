"""Speed benchmark: the same case through several training set-ups, side by side, on one GPU.

    python -m nerbench_core.perf qwen1.5-7b bert-base-cased [--variants baseline,default,unsloth]
        [--steps baseline=40,default=10] [--synthetic] [--out DIR] [-- extra pytest args]

Each variant is one `pytest bench` run of the case on the full training split (one epoch, or the step cap
given for it in --steps), labelled with the variant's name. Each runs in its own process, one after the
other on the same GPU, because unsloth patches transformers at import and would otherwise change the
baseline too. The table (`report --cost`) gives real tokens/s overall and after 3 warm-up steps, the ratio
of steady rates to the baseline, padding, peak memory and MFU, from the records the runs wrote.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from .reporting.store import load_records
from .specs import resolve_suite
from .reporting.table import render_cost

# name -> (what it is, pytest arguments). "baseline" is transformers + peft + bitsandbytes with the
# Trainer's defaults: random batches of 16 sentences padded to the longest, no fused kernels, and gradient
# checkpointing on (as in issue 5's anchor measurement).
VARIANTS = {
    "baseline": ("HF Trainer defaults: random batches of 16 sentences, padded to the longest, no fused kernels",
                 ["--backend", "hf", "--set", "group_by_length=false", "--set", "batch_size=16",
                  "--set", "max_tokens_per_batch=0", "--set", "fused_kernels=false", "--set", "fused_lora=false",
                  "--set", "cuda_graphs=false", "--set", "fused_rope=false", "--set", "packed_sequences=false",
                  "--set", "gradient_checkpointing=true", "--set", "bnb_without_syncs=false"]),
    "default": ("nerbench's default for the case (its suite spec)", ["--backend", "hf"]),
    "fast": ("the default with 4,096-token batches (the decoders' default before it was measured to cost F1)",
             ["--backend", "hf", "--set", "batch_size=4096", "--set", "max_tokens_per_batch=4096"]),
    "large": ("the default with 16,384-token batches (fewer, larger steps: check F1 before using it)",
              ["--backend", "hf", "--set", "batch_size=4096", "--set", "max_tokens_per_batch=16384"]),
    "unsloth": ("the default set-up on the unsloth backend", ["--backend", "unsloth"]),
    # one lever off at a time, to show its gain against the default
    "peft-lora": ("the default with peft's own LoRA layers (fused_lora off)", ["--backend", "hf", "--set", "fused_lora=false"]),
    "eager": ("the default without CUDA graphs (every step launched from Python)", ["--backend", "hf", "--set", "cuda_graphs=false"]),
    "dequantize": ("the default dequantizing the 4-bit weights at every step (keep_dequantized off)",
                   ["--backend", "hf", "--set", "keep_dequantized=false"]),
    "torch-rope": ("the default with transformers' rotary embedding (fused_rope off)",
                   ["--backend", "hf", "--set", "fused_rope=false"]),
    "torch-lora-backward": ("the default with torch's LoRA input gradient (fused_lora_backward off)",
                            ["--backend", "hf", "--set", "fused_lora_backward=false"]),
    "bf16-matmuls": ("the default with the frozen weights' matmuls in bf16 (fp8_matmuls off)",
                     ["--backend", "hf", "--set", "fp8_matmuls=false"]),
    "fp8": ("the default with every frozen weight's matmuls in FP8 (fp8_matmuls on, not only where auto finds they "
            "pay)",
            ["--backend", "hf", "--set", "fp8_matmuls=true"]),
    "bnb-synced": ("the default with bitsandbytes' optimizer step synchronizing after each parameter, as bitsandbytes "
                   "has it (bnb_without_syncs off)",
                   ["--backend", "hf", "--set", "bnb_without_syncs=false"]),
    "padded": ("the default with padded batches (packed_sequences off)",
               ["--backend", "hf", "--set", "packed_sequences=false"]),
    "no-liger": ("the default without liger-kernel's fused RMSNorm and SwiGLU", ["--backend", "hf", "--set", "fused_kernels=false"]),
}


BENCH_TEST = Path(__file__).resolve().parent.parent / "bench" / "test_ner.py"


def suite_choice(extra: list[str]) -> str:
    return extra[extra.index("--suite") + 1] if "--suite" in extra else "all"


def parse_steps(text: str) -> dict[str, int]:
    steps = {}
    for item in filter(None, text.split(",")):
        name, _, n = item.partition("=")
        if name not in VARIANTS or not n.isdigit():
            raise argparse.ArgumentTypeError(f"--steps: {item!r} is not VARIANT=N with a variant of {list(VARIANTS)}")
        steps[name] = int(n)
    return steps


def run_variant(case: str, variant: str, out: Path, synthetic: bool, steps: int | None, extra: list[str]) -> int:
    # the case's own test id: -k would also select the cases whose names contain this one (qwen1.5-7b-generative)
    cmd = [sys.executable, "-m", "pytest", f"{BENCH_TEST}::test_ner[{case}]", "--suite", "all", "--rerun", "-q",
           "-p", "no:cacheprovider", "--label", variant, "--results-dir", str(out / variant),
           "--set", "epochs=1", *VARIANTS[variant][1], *extra]
    if steps:
        cmd += ["--set", f"max_steps={steps}"]
    if synthetic:
        cmd.append("--synthetic")
    print(f"\n$ {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd).returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nerbench_core.perf", description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="+", help="case names (pytest ids) of the suites")
    ap.add_argument("--variants", default="baseline,default,unsloth")
    ap.add_argument("--steps", type=parse_steps, default={}, help="step caps per variant, e.g. baseline=40,default=10")
    ap.add_argument("--synthetic", action="store_true", help="random weights in the exact architecture")
    ap.add_argument("--out", default="perf-results", help="records go to OUT/VARIANT")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # more pytest arguments
    args = ap.parse_args(argv[: len(argv) - len(extra) - (1 if "--" in argv else 0)])
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    out = Path(args.out)
    families = {s.name: s.family for s in resolve_suite(suite_choice(extra))}
    for case in args.cases:
        for variant in variants:
            if not (variant == "unsloth" and families.get(case) == "encoder"):  # unsloth is for decoders
                run_variant(case, variant, out, args.synthetic, args.steps.get(variant), extra)
    records = [r for r in load_records([out / v for v in variants if (out / v).is_dir()]) if r.case in args.cases]
    gpu = next((r.environment["machine"]["gpu"]["name"] for r in records
                if r.environment.get("machine", {}).get("gpu")), "no GPU")
    print(f"\nnerbench perf on {gpu}")
    for variant in variants:
        print(f"  {variant}: {VARIANTS[variant][0]}")
    order = {v: i for i, v in enumerate(variants)}
    records.sort(key=lambda r: (args.cases.index(r.case), order.get(r.label, 99)))
    print(render_cost(records, baseline="baseline"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
