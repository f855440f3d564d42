#!/usr/bin/env bash
# Issue 5, one GPU: one full epoch of Qwen1.5-7B QLoRA at the seed default (4096-token batches) on the hf and the
# unsloth backend (warm-up and any recompilation included, unlike a few capped steps), and the default-set-up
# rates of Qwen1.5-4B and 14B (20 steps) for the seed-suite time estimate. Synthetic weights, real text.
# (Its -k "0.5b or 1.8b or 4b" also matches qwen1.5-14b, which ran first and left no time for 1.8B and 0.5B.)
R=${R:-/tmp/epoch}; mkdir -p $R
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
seed="python -m pytest bench --synthetic --suite seed --rerun -q -p no:cacheprovider --set epochs=1"
step hf $seed -k qwen1.5-7b --backend hf --label hf-epoch --results-dir $R/hf
step unsloth $seed -k qwen1.5-7b --backend unsloth --label unsloth-epoch --results-dir $R/unsloth
step small $seed -k "0.5b or 1.8b or 4b" --set max_steps=20 --label default --results-dir $R/small
python -m nerbench_core.report $R/hf $R/unsloth $R/small --cost --baseline hf-epoch | tee $OUT/epoch.txt
tar -czf $OUT/epoch.tar.gz -C $R .
