#!/usr/bin/env bash
# Issue 5, per-step overhead on one GPU: eager against regional torch.compile (nerbench_core/compiling.py), capped
# steps, steady tokens/s after 3 warm-up steps (docs/PERFORMANCE.md). The lanes after 7b-compile did not start
# within the call's time, nor did a sync-debug lane it also had; docs/gpu/overhead.sh ran that one.
R=${R:-/tmp/compile}; mkdir -p $R
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
C="--set torch_compile=true"
seed_case 0.5b-eager qwen1.5-0.5b --set max_steps=40
seed_case 0.5b-compile qwen1.5-0.5b --set max_steps=40 $C
# (When it ran, a third lane tried CUDA graphs: torch.compile mode "reduce-overhead" over lengths padded to multiples
# of 16. It died of a segmentation fault after 82 s, and those two options were taken out again.)
seed_case bert-compile bert-base-cased $C
seed_case 7b-compile qwen1.5-7b --set max_steps=25 $C
seed_case 14b-compile qwen1.5-14b --set max_steps=16 $C
seed_case bert-eager bert-base-cased
{ python -m nerbench_core.report $R/records --cost; python -m nerbench_core.report $R/records --time; } | tee $OUT/compile.txt
tar -czf $OUT/compile.tar.gz -C $R .
