#!/usr/bin/env bash
# Issue 5: the synthetic seed suite at its defaults (3 epochs, dev scored each epoch, test once, model build
# included), one case at a time per GPU on a 4-GPU host, so each case's time is that of a lone run on one GPU; the
# sum is the suite's time one case after another. Beside them: the perf benchmark's plain baseline and default for
# the 7B, and the 14B under --gpu-memory 12 (as on a 12 GB card: 40 steps, for its peak memory). Also keeps the
# first part of the SmolLM2 GGUF file (.gga/part, when carried with .device) in /tmp/gg/a for
# docs/gpu/offline_full.sh, the call right after.
R=${R:-/tmp/suite}; mkdir -p $R /tmp/gg
[ -f .gga/part ] && cp .gga/part /tmp/gg/a
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
suite="--label suite --results-dir $R/suite"
perf="python -m nerbench_core.perf --synthetic --out $R/perf"
( step 7b env CUDA_VISIBLE_DEVICES=0 $seed -k qwen1.5-7b $suite
  step 7b-perf env CUDA_VISIBLE_DEVICES=0 $perf qwen1.5-7b --variants baseline,default,fast --steps baseline=40,default=60,fast=25 ) &
( step 4b env CUDA_VISIBLE_DEVICES=1 $seed -k qwen1.5-4b $suite
  step 0.5b env CUDA_VISIBLE_DEVICES=1 $seed -k qwen1.5-0.5b $suite ) &
( step 1.8b env CUDA_VISIBLE_DEVICES=2 $seed -k qwen1.5-1.8b $suite
  step bert env CUDA_VISIBLE_DEVICES=2 $seed -k bert-base-cased $suite
  step 14b-12gb env CUDA_VISIBLE_DEVICES=2 $seed -k qwen1.5-14b --gpu-memory 12 --set epochs=1 --set max_steps=40 \
    --label 12gb-card --results-dir $R/probe ) &
( step 14b env CUDA_VISIBLE_DEVICES=3 $seed -k qwen1.5-14b $suite ) &
wait
report="python -m nerbench_core.report $R/suite"
{ $report; $report --time; $report --cost; python -m nerbench_core.report $R/probe --cost
  python -m nerbench_core.report $R/perf/* --cost --baseline baseline; } | tee $OUT/suite.txt
tar -czf $OUT/suite.tar.gz -C $R .  # records, logs
