#!/usr/bin/env bash
# Issue 5: the synthetic seed suite's cases at their defaults (3 epochs, dev scored each epoch, test once, model
# build included), one after another on one GPU: `bash docs/gpu/suite1024.sh CASE...` (the device's 10-minute calls
# take two or three cases each; the report adds them up over the calls' records). PROBE14=1 also runs the 14B as on
# a 12 GB card (--gpu-memory 12, 40 steps: its peak memory).
R=${R:-/tmp/suite1024}; mkdir -p $R
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
[ "${PROBE14:-0}" = 1 ] && step 14b-12gb $seed -k qwen1.5-14b --gpu-memory 12 --set epochs=1 --set max_steps=40 \
  --label 12gb-card --results-dir $R/probe
suite_cases "$@"
{ python -m nerbench_core.report $R/suite --time; python -m nerbench_core.report $R/suite $(ls -d $R/probe 2>/dev/null) --cost
} | tee $OUT/suite.txt
tar -czf $OUT/suite.tar.gz -C $R .
