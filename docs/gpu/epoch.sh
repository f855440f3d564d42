#!/usr/bin/env bash
# Issue 5, one GPU: Qwen1.5-7B QLoRA at the seed default (4096-token batches, 3 epochs, synthetic weights, real
# text) on the unsloth backend, for comparison with the hf backend's run in docs/gpu/suite.sh (same settings; with
# gradient_checkpointing = "auto", hf drops checkpointing on an 80 GB card, unsloth keeps its own); and the
# save-and-reload test on the GPU (tests/test_saved_case.py: the unsloth and hf QLoRA cases reload to the same
# predictions; its hf case failed there on mixed head dtypes outside autocast, fixed by modeling.cast_head_input).
# (An earlier version compared one epoch on each backend, both with checkpointing on: docs/PERFORMANCE.md.)
R=${R:-/tmp/epoch}; mkdir -p $R
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
step gpu-tests python -m pytest tests/test_saved_case.py -q -p no:cacheprovider
step unsloth python -m pytest bench --synthetic --suite seed --rerun -q -p no:cacheprovider -k qwen1.5-7b \
  --backend unsloth --label unsloth --results-dir $R/unsloth
{ tail -3 $R/gpu-tests.log; python -m nerbench_core.report $R/unsloth --cost; python -m nerbench_core.report $R/unsloth --time
} | tee $OUT/epoch.txt
tar -czf $OUT/epoch.tar.gz -C $R .
