#!/usr/bin/env bash
# Issue 5, CUDA graphs (one GPU): the GPU tests of cuda_graphs.py, torch.profiler of the 7B's replayed steps 40-42,
# then the seed suite's cases given as arguments at their defaults (3 epochs, dev each epoch, test once): records in
# $R/suite, `report --time` at the end: `bash docs/gpu/graphs_suite.sh qwen1.5-14b qwen1.5-4b`. TESTS=0 and PROFILE7B=0
# skip the first two; BASELINE7B=1 runs the 7B's plain baseline (perf, 40 steps) first, for the ratio.
R=${R:-/tmp/graphs_suite}; mkdir -p $R /tmp/gg
[ -f .gga/part ] && cp .gga/part /tmp/gg/a  # the GGUF file's first part, for docs/gpu/offline_full.sh next
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
[ "${TESTS:-1}" = 1 ] && step gpu-tests python -m pytest tests/test_cuda_graphs.py -q -p no:cacheprovider
[ "${BASELINE7B:-0}" = 1 ] && step 7b-baseline python -m nerbench_core.perf --synthetic --out $R/perf qwen1.5-7b \
  --variants baseline --steps baseline=40
[ "${PROFILE7B:-1}" = 1 ] && seed_case 7b-profile qwen1.5-7b --set max_steps=43 --profile $R/profile
suite_cases "$@"
{ python -m nerbench_core.report $R/suite --time; python -m nerbench_core.report $R/suite $(ls -d $R/records $R/perf/* 2>/dev/null) --cost --baseline baseline; } | tee $OUT/suite.txt
tail -3 $R/gpu-tests.log > $OUT/gpu-tests.txt 2>/dev/null; cp -r $R/profile $OUT/ 2>/dev/null
tar -czf $OUT/graphs_suite.tar.gz -C $R .
