#!/usr/bin/env bash
# Issue 5 benchmark on one GPU: Qwen1.5-7B QLoRA and bert-base-cased (exact architectures, random weights built
# on the GPU, real CoNLL-2003 train text) through the plain-HF baseline, nerbench's default and unsloth; then
# Qwen1.5-14B at its default settings (and with 2048-token batches) for peak memory. (When the numbers in
# docs/PERFORMANCE.md were taken, the 14B default was 2048 tokens and the second run used 1024.) Every step stops by the deadline so the table comes back.
R=${R:-/tmp/perf}; mkdir -p $R
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
perf="python -m nerbench_core.perf --synthetic --out $R"
seed14="python -m pytest bench --synthetic --suite seed -k qwen1.5-14b --rerun -q -p no:cacheprovider --set epochs=1"
step 7b $perf qwen1.5-7b --variants baseline,default,large --steps baseline=40,default=25,large=10
step 14b $seed14 --set max_steps=16 --label default --results-dir $R/default
step bert $perf bert-base-cased --variants baseline,default,large
step unsloth $perf qwen1.5-7b --variants unsloth --steps unsloth=8
step 14b-2048 $seed14 --set max_steps=16 --set max_tokens_per_batch=2048 --label 2048-tokens --results-dir $R/t2048
python -m nerbench_core.report $R/baseline $R/default $R/large $R/unsloth $R/t2048 --cost --baseline baseline | tee $OUT/perf.txt
tar -czf $OUT/perf.tar.gz -C $R .
