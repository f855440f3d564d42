#!/usr/bin/env bash
# Issue 5 (one GPU): the seed suite's cases given as arguments, at their defaults (3 epochs, dev each epoch, test
# once), in ONE pytest process, as `pytest bench --suite seed --synthetic` runs them; the process's wall time (imports
# and data included) in steps.txt, `report --time` at the end. `bash docs/gpu/suite_process.sh bert-base-cased
# qwen1.5-0.5b`. TESTS=1 runs the GPU tests first; BENCH7B=1 the 7B's benchmark (the plain baseline, 40 steps, and
# the default over one epoch); PROBE14B=1 the 14B as on a 12 GB card (--gpu-memory 12, 40 steps) at the end.
R=${R:-/tmp/suite_process}; mkdir -p $R
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
[ "${TESTS:-0}" = 1 ] && step gpu-tests python -m pytest tests/test_cuda_graphs.py tests/test_lora_kernels.py \
  tests/test_decoder.py -q -p no:cacheprovider -k "not resumes"
[ "${BENCH7B:-0}" = 1 ] && step 7b-bench python -m nerbench_core.perf --synthetic --out $R/perf qwen1.5-7b \
  --variants baseline,default --steps baseline=40
cases=$(printf " or %s" "$@")
step suite $seed -k "${cases# or }" --label suite --results-dir $R/suite
[ "${PROBE14B:-0}" = 1 ] && step 14b-12gb $seed -k qwen1.5-14b --gpu-memory 12 --set epochs=1 --set max_steps=40 \
  --label 12gb-card --results-dir $R/probe
{ python -m nerbench_core.report $R/suite --time
  python -m nerbench_core.report $R/suite $(ls -d $R/probe $R/perf/* 2>/dev/null) --cost --baseline baseline; } | tee $OUT/suite.txt
tail -3 $R/gpu-tests.log > $OUT/gpu-tests.txt 2>/dev/null; tail -5 $R/suite.log > $OUT/suite-tail.txt
tar -czf $OUT/suite_process.tar.gz -C $R .
