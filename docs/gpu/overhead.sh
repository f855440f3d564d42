#!/usr/bin/env bash
# Issue 5, where a step's host time goes (one GPU): torch.profiler and cProfile over steps 4-6 (--profile) of the
# 0.5B, bert-base-cased and the 7B at their defaults; the host's waits on the GPU (torch.cuda sync debug mode:
# each synchronizing call's source line, in the warnings summary of sync.log); the 0.5B without growable
# allocator segments; the 0.5B compiled, with dynamo's recompilations and graph breaks logged.
R=${R:-/tmp/overhead}; mkdir -p $R
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
seed_case 0.5b-profile qwen1.5-0.5b --set max_steps=10 --profile $R/profile
seed_case bert-profile bert-base-cased --set max_steps=10 --profile $R/profile
step sync python -W always -c "import sys, torch, pytest; torch.cuda.set_sync_debug_mode('warn'); sys.exit(pytest.main(
  ['bench', '--synthetic', '--suite', 'seed', '--rerun', '-p', 'no:cacheprovider', '-k', 'qwen1.5-0.5b', '--set', 'epochs=1',
   '--set', 'max_steps=6', '--label', 'sync', '--results-dir', '$R/sync']))"
seed_case 0.5b-eager qwen1.5-0.5b --set max_steps=40
# its own results folder: the same case and settings have the same run key, and would replace 0.5b-eager's record
step 0.5b-fixed-segments env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False $seed1 -k qwen1.5-0.5b --label 0.5b-fixed-segments \
  --results-dir $R/segments --set max_steps=40
seed_case 7b-profile qwen1.5-7b --set max_steps=8 --profile $R/profile
step 0.5b-compile-logs env TORCH_LOGS=recompiles,graph_breaks $seed1 -k qwen1.5-0.5b --label 0.5b-compile-logs \
  --results-dir $R/records --set max_steps=12 --set torch_compile=true -s
python -m nerbench_core.report $R/records $(ls -d $R/segments 2>/dev/null) --cost | tee $OUT/overhead.txt
grep -B2 -A6 "ynchroniz" $R/sync.log | head -200 > $OUT/sync.txt
tar -czf $OUT/overhead.tar.gz -C $R .
