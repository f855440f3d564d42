"""Speed benchmark: the same case through several training set-ups, side by side, on one GPU.

    python -m nerbench_core.perf qwen1.5-7b bert-base-cased [--variants baseline,grouped,tokens,unsloth]
        [--synthetic] [--out DIR] [-- extra pytest args]

Each variant is one `pytest bench` run of the case (quick sample, one epoch unless told otherwise) with
command-line overrides; each runs in its own process, because unsloth patches transformers at import and
would otherwise change the baseline too. The table gives real tokens/s, the ratio to the baseline, padding,
peak memory and MFU, from the records the runs wrote.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from tabulate import tabulate

from .records import load_records
from .specs import resolve_suite


def suite_choice(extra: list[str]) -> str:
    return extra[extra.index("--suite") + 1] if "--suite" in extra else "all"

# name -> (what it is, pytest arguments). "baseline" is transformers + peft + bitsandbytes with the
# Trainer's defaults: random batches of 16 sentences padded to the longest, no fused kernels.
VARIANTS = {
    "baseline": ("HF defaults: random batches of 16, padded to the longest",
                 ["--backend", "hf", "--set", "group_by_length=false", "--set", "batch_size=16"]),
    "grouped": ("nerbench default: length-grouped batches of 16", ["--backend", "hf", "--set", "batch_size=16"]),
    "tokens": ("nerbench, 4096-token length-sorted batches",
               ["--backend", "hf", "--set", "batch_size=512", "--set", "max_tokens_per_batch=4096"]),
    "unsloth": ("unsloth backend, 4096-token length-sorted batches",
                ["--backend", "unsloth", "--set", "batch_size=512", "--set", "max_tokens_per_batch=4096"]),
}


def run_variant(case: str, variant: str, out: Path, synthetic: bool, extra: list[str]) -> int:
    cmd = [sys.executable, "-m", "pytest", "bench", "--quick", "--suite", "all", "-k", case, "--rerun", "-q",
           "-p", "no:cacheprovider", "--results-dir", str(out / variant), *VARIANTS[variant][1], *extra]
    if synthetic:
        cmd.append("--synthetic")
    print(f"\n$ {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd).returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nerbench_core.perf", description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="+", help="case names (pytest ids) of the suites")
    ap.add_argument("--variants", default="baseline,grouped,tokens,unsloth")
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
    skipped = {(c, "unsloth") for c in args.cases if families.get(c) == "encoder"}  # unsloth is for decoders
    for case in args.cases:
        for variant in variants:
            if (case, variant) not in skipped:
                run_variant(case, variant, out, args.synthetic, extra)
    rows = []
    for case in args.cases:
        base = None
        for variant in variants:
            found = [r for r in load_records([out / variant]) if r.case == case]
            if (case, variant) in skipped:
                continue
            if not found:
                rows.append([case, variant, VARIANTS[variant][0], "", "", "", "", "", "no record (see log)"])
                continue
            r = max(found, key=lambda r: r.created)
            c = r.cost
            tps = c.get("train_tokens_per_second")
            base = tps if variant == "baseline" else base
            rows.append([
                case, variant, VARIANTS[variant][0],
                f"{tps:,.0f}" if tps else "",
                f"{tps / base:.2f}x" if tps and base else "",
                f"{100 * c['padding_fraction']:.0f}%" if c.get("padding_fraction") is not None else "",
                f"{c['peak_gpu_allocated_gib']:.1f} / {c['peak_gpu_reserved_gib']:.1f}" if "peak_gpu_allocated_gib" in c else "",
                f"{100 * c['mfu']:.1f}%" if c.get("mfu") else "",
                r.status + (f": {r.error[:80]}" if r.error else ""),
            ])
    gpu = next((r.environment.get("machine", {}).get("gpu", {}).get("name") for v in variants
                for r in load_records([out / v]) if r.environment.get("machine", {}).get("gpu")), "no GPU")
    print(f"\nnerbench perf on {gpu}")
    print(tabulate(rows, headers=["case", "variant", "set-up", "real tok/s", "vs baseline", "padding",
                                  "peak GiB (alloc / reserved)", "MFU", "status"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
