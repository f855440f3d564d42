#!/usr/bin/env bash
# Issue 5, set-up search on 4 GPUs at once (one job per GPU): Qwen1.5-14B memory and Qwen1.5-7B / bert-base-cased
# speed under candidate defaults (token budget, liger-kernel, gradient checkpointing), synthetic weights built
# layer by layer on the GPU, full CoNLL-2003 train text, capped steps (--set max_steps), steady tokens/s after
# 3 warm-up steps. Prints `report --cost`; records, logs and profiles come back as one archive.
set -uo pipefail
mkdir -p /tmp/site && tar -xJf .device/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
export NERBENCH_DATA_DIR=$PWD/.device/data/conll2003 NERBENCH_TOKENIZERS=$PWD/.device/tokenizers
export NERBENCH_CACHE_DIR=/tmp/nbcache PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
R=/tmp/explore; mkdir -p $R; nvidia-smi -L | tee $OUT/gpu.txt
deadline=$(( $(date +%s) + ${BUDGET_S:-520} ))  # every job stops by then, so the summary always comes back
run() {  # GPU LABEL CASE ARGS...
  local gpu=$1 label=$2 case=$3 left=$(( deadline - $(date +%s) )); shift 3
  [ $left -gt 30 ] || { echo "$label not started (time)" >> $R/done.txt; return; }
  CUDA_VISIBLE_DEVICES=$gpu timeout $left python -m pytest bench --synthetic --suite seed -k "$case" --rerun -q \
    -p no:cacheprovider --set epochs=1 --label $label --results-dir $R/records "$@" > $R/$label.log 2>&1
  echo "$label rc=$? $(( $(date +%s) - deadline + ${BUDGET_S:-520} )) s" >> $R/done.txt
}
tok() { echo --set batch_size=4096 --set max_tokens_per_batch=$1; }
( run 0 14b-tok1024 qwen1.5-14b $(tok 1024) --set max_steps=16
  run 0 14b-tok2048 qwen1.5-14b $(tok 2048) --set max_steps=12
  run 0 14b-b16 qwen1.5-14b --set max_steps=24
  run 0 7b-profile qwen1.5-7b $(tok 8192) --set max_steps=7 --profile $R/profile ) &
( run 1 7b-tok4096 qwen1.5-7b $(tok 4096) --set max_steps=16
  run 1 7b-tok8192 qwen1.5-7b $(tok 8192) --set max_steps=12
  run 1 7b-tok16384 qwen1.5-7b $(tok 16384) --set max_steps=10 ) &
( run 2 7b-baseline qwen1.5-7b --set group_by_length=false --set fused_kernels=false --set batch_size=16 --set max_steps=40
  run 2 7b-tok8192-noliger qwen1.5-7b $(tok 8192) --set fused_kernels=false --set max_steps=12
  run 2 7b-tok16384-nogc qwen1.5-7b $(tok 16384) --set gradient_checkpointing=false --set max_steps=10 ) &
( run 3 bert-b32 bert-base-cased
  run 3 bert-tok8192 bert-base-cased $(tok 8192)
  run 3 bert-tok16384 bert-base-cased $(tok 16384)
  run 3 bert-baseline bert-base-cased --set group_by_length=false --set batch_size=32
  run 3 bert-profile bert-base-cased $(tok 8192) --set max_steps=7 --profile $R/profile ) &
wait
python -m nerbench_core.report $R/records --cost | tee $OUT/cost.txt
cat $R/done.txt
tar -czf $OUT/explore.tar.gz -C $R .
