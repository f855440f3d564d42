#!/usr/bin/env bash
# Issue 5's benchmark (one GPU): the 7B and bert-base-cased through the plain-HF baseline, the default without CUDA
# graphs ("eager", the previous stop's default), the default, and the unsloth backend, one process each on the same
# GPU and data; the default over one whole epoch, so that its graph captures (one per batch shape) are paid in it.
R=${R:-/tmp/bench}; mkdir -p $R
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
perf="python -m nerbench_core.perf --synthetic --out $R/perf"
step 7b $perf qwen1.5-7b --variants baseline,eager,default,unsloth --steps baseline=40,eager=100,unsloth=40
step bert $perf bert-base-cased --variants baseline,eager,default
python -m nerbench_core.report $R/perf/* --cost --baseline baseline | tee $OUT/bench.txt
tar -czf $OUT/bench.tar.gz -C $R .
