#!/usr/bin/env bash
# Issue 5: the synthetic seed suite at its defaults (3 epochs, dev scored each epoch, test once, model build
# included), one case per GPU on a 4-GPU host, so each case's time is that of a lone run on one GPU; the sum is
# the suite's time one case after another. Qwen1.5-14B (3 epochs at 1024-token batches: longer than one 10-minute
# call) runs one epoch here. Then, on the GPUs left free: a torch.profiler table of the 7B default and the 7B
# default without gradient checkpointing (memory and speed). Also keeps the first part of the SmolLM2 GGUF file
# (.gga/part, carried with .device) in /tmp/gg/a for docs/gpu/reference.sh, the call right after.
R=${R:-/tmp/suite}; mkdir -p $R /tmp/gg
[ -f .gga/part ] && cp .gga/part /tmp/gg/a
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
seed="python -m pytest bench --synthetic --suite seed --rerun -q -p no:cacheprovider"
suite="--label suite --results-dir $R/suite"
( step 7b env CUDA_VISIBLE_DEVICES=0 $seed -k qwen1.5-7b $suite
  step 7b-profile env CUDA_VISIBLE_DEVICES=0 $seed -k qwen1.5-7b --set epochs=1 --set max_steps=8 --profile $R/profile --label profile --results-dir $R/probe ) &
( step 4b env CUDA_VISIBLE_DEVICES=1 $seed -k qwen1.5-4b $suite
  step 7b-nogc env CUDA_VISIBLE_DEVICES=1 $seed -k qwen1.5-7b --set epochs=1 --set max_steps=25 --set gradient_checkpointing=false --label no-grad-ckpt --results-dir $R/probe ) &
( step 14b-epoch env CUDA_VISIBLE_DEVICES=2 $seed -k qwen1.5-14b --set epochs=1 --label suite-1-epoch --results-dir $R/suite14 ) &
( step bert env CUDA_VISIBLE_DEVICES=3 $seed -k bert-base-cased $suite
  step 0.5b env CUDA_VISIBLE_DEVICES=3 $seed -k qwen1.5-0.5b $suite
  step 1.8b env CUDA_VISIBLE_DEVICES=3 $seed -k qwen1.5-1.8b $suite ) &
wait
report="python -m nerbench_core.report $R/suite $R/suite14"
{ $report; $report --time; $report --cost; python -m nerbench_core.report $R/probe --cost; } | tee $OUT/suite.txt
tar -czf $OUT/suite.tar.gz -C $R .  # records, logs, profile
