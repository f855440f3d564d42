#!/usr/bin/env bash
# Issue 5: the synthetic seed suite at its defaults (3 epochs, dev scored each epoch, test once, model build
# included), one case per GPU on a 4-GPU host, so each case's time is that of a lone run on one GPU; the sum is
# the suite's time one case after another. Qwen1.5-14B (3 epochs at 1024-token batches: longer than one 10-minute
# call) runs one epoch, and only with WITH_14B=1 (its time is that of the previous call's run: see
# docs/PERFORMANCE.md). Beside them: the perf benchmark's plain baseline and default for the 7B, and the 14B with
# gradient_checkpointing = "auto" (40 steps). Also keeps the first part of the SmolLM2 GGUF file (.gga/part, when
# carried with .device) in /tmp/gg/a for docs/gpu/offline_full.sh, the call right after.
R=${R:-/tmp/suite}; mkdir -p $R /tmp/gg
[ -f .gga/part ] && cp .gga/part /tmp/gg/a
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
seed="python -m pytest bench --synthetic --suite seed --rerun -q -p no:cacheprovider"
suite="--label suite --results-dir $R/suite"
perf="python -m nerbench_core.perf --synthetic --out $R/perf"
( step 7b env CUDA_VISIBLE_DEVICES=0 $seed -k qwen1.5-7b $suite
  step 7b-perf env CUDA_VISIBLE_DEVICES=0 $perf qwen1.5-7b --variants baseline,default --steps baseline=40,default=25 ) &
( step 4b env CUDA_VISIBLE_DEVICES=1 $seed -k qwen1.5-4b $suite ) &
( step 1.8b env CUDA_VISIBLE_DEVICES=2 $seed -k qwen1.5-1.8b $suite
  step 0.5b env CUDA_VISIBLE_DEVICES=2 $seed -k qwen1.5-0.5b $suite ) &
( step 14b-auto env CUDA_VISIBLE_DEVICES=3 $seed -k qwen1.5-14b --set epochs=1 --set max_steps=40 --set gradient_checkpointing=auto --label auto-ckpt --results-dir $R/probe
  step bert env CUDA_VISIBLE_DEVICES=3 $seed -k bert-base-cased $suite
  [ "${WITH_14B:-0}" = 1 ] && step 14b-epoch env CUDA_VISIBLE_DEVICES=3 $seed -k qwen1.5-14b --set epochs=1 --label suite-1-epoch --results-dir $R/suite14 ) &
wait
report="python -m nerbench_core.report $R/suite $(ls -d $R/suite14 2>/dev/null)"
{ $report; $report --time; $report --cost; python -m nerbench_core.report $R/probe --cost
  python -m nerbench_core.report $R/perf/baseline $R/perf/default --cost --baseline baseline; } | tee $OUT/suite.txt
tar -czf $OUT/suite.tar.gz -C $R .  # records, logs, profile
