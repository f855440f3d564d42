#!/usr/bin/env bash
# Issue 5, CUDA graphs (one GPU): the GPU tests of cuda_graphs.py (replayed steps give eager gradients; a case trains
# through them), then the perf benchmark of the default (graphs) against the same without them ("eager") for the
# 0.5B, bert-base-cased and the 7B, the 7B's plain baseline rerun beside them.
R=${R:-/tmp/graphs}; mkdir -p $R
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
step gpu-tests python -m pytest tests/test_cuda_graphs.py -q -p no:cacheprovider -x
perf="python -m nerbench_core.perf --synthetic --out $R/perf"
step 0.5b-perf $perf qwen1.5-0.5b --variants default,eager --steps default=200,eager=150
step bert-perf $perf bert-base-cased --variants default,eager
step 7b-perf $perf qwen1.5-7b --variants baseline,default,eager --steps baseline=40,default=200,eager=100
python -m nerbench_core.report $R/perf/* --cost --baseline baseline | tee $OUT/graphs.txt
cp $R/*.log $OUT/ 2>/dev/null; tar -czf $OUT/graphs.tar.gz -C $R .
