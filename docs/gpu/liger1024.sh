#!/usr/bin/env bash
# Issue 5, after the fused LoRA projections (one GPU): liger-kernel on and off at the decoders' 1,024-token default
# for the 0.5B and the 7B (perf benchmark, 100 steps each); the 14B as on a 12 GB card (40 steps: its peak memory
# with the block scales kept dequantized); bert-base-cased's seed-suite case (3 epochs). Keeps the first part of
# the SmolLM2 GGUF file (.gga/part, when carried) in /tmp/gg/a for docs/gpu/offline_full.sh, the call right after.
R=${R:-/tmp/liger}; mkdir -p $R /tmp/gg
[ -f .gga/part ] && cp .gga/part /tmp/gg/a
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
perf="python -m nerbench_core.perf --synthetic --out $R/perf"
step 0.5b-perf $perf qwen1.5-0.5b --variants default,no-liger --steps default=100,no-liger=100
step 7b-perf $perf qwen1.5-7b --variants default,no-liger --steps default=100,no-liger=100
step 14b-12gb $seed -k qwen1.5-14b --gpu-memory 12 --set epochs=1 --set max_steps=40 --label 12gb-card --results-dir $R/probe
step bert $seed -k bert-base-cased --label suite --results-dir $R/suite
{ python -m nerbench_core.report $R/perf/* $R/probe --cost; python -m nerbench_core.report $R/suite --time; } | tee $OUT/liger.txt
tar -czf $OUT/liger.tar.gz -C $R .
