#!/usr/bin/env bash
# Issue 5, per-step overhead on one GPU: eager against regional torch.compile (nerbench_core/compiling.py), capped
# steps, steady tokens/s after 3 warm-up steps (docs/PERFORMANCE.md). The lanes after 7b-compile did not start
# within the call's time; docs/gpu/overhead.sh ran the profile and sync lanes.
R=${R:-/tmp/compile}; mkdir -p $R
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
seed="python -m pytest bench --synthetic --suite seed --rerun -q -p no:cacheprovider --set epochs=1"
run() { local label=$1 case=$2; shift 2; step $label $seed -k $case --label $label --results-dir $R/records "$@"; }
C="--set torch_compile=true"
run 0.5b-eager qwen1.5-0.5b --set max_steps=40
run 0.5b-compile qwen1.5-0.5b --set max_steps=40 $C
# (When it ran, a third lane tried CUDA graphs: torch.compile mode "reduce-overhead" over lengths padded to multiples
# of 16. It died of a segmentation fault after 82 s, and those two options were taken out again.)
run bert-compile bert-base-cased $C
run 7b-compile qwen1.5-7b --set max_steps=25 $C
run 14b-compile qwen1.5-14b --set max_steps=16 $C
step sync python -W always -c "import sys, torch, pytest; torch.cuda.set_sync_debug_mode('warn'); sys.exit(pytest.main(
  ['bench', '--synthetic', '--suite', 'seed', '--rerun', '-p', 'no:cacheprovider', '-k', 'qwen1.5-0.5b', '--set', 'epochs=1',
   '--set', 'max_steps=6', '--label', 'sync', '--results-dir', '$R/sync']))"
run bert-eager bert-base-cased
{ python -m nerbench_core.report $R/records --cost; python -m nerbench_core.report $R/records --time; } | tee $OUT/compile.txt
grep -B2 -A4 "synchroniz" $R/sync.log | head -150 > $OUT/sync.txt
tar -czf $OUT/compile.tar.gz -C $R .
