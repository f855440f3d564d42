#!/usr/bin/env bash
# Cases of a suite on the GPUs of one host, several lanes at once:
#   bash docs/gpu/lanes.sh SUITE "GPU PYTEST-ARGS..." ["GPU PYTEST-ARGS..." ...]
# e.g. bash docs/gpu/lanes.sh offline "0 -k smollm2-lora-bidir --seeds 42,43" "1 -k smollm2-generative"
# Each lane is one `pytest bench --suite SUITE PYTEST-ARGS` process on GPU (CUDA_VISIBLE_DEVICES); lanes on one GPU
# share it (the small models are bound by their host process, not the GPU). SUITE seed runs --synthetic (random
# weights in the exact architectures, no download). Every lane's records and predictions go to one results folder;
# the table, the time table and the cost table at the end; records, predictions and logs come back in
# $OUT/lanes.tar.gz.
suite=$1; shift
source docs/gpu/lib.sh
extra=$([ "$suite" = seed ] && echo --synthetic)
n=0
for lane in "$@"; do  # eval: a lane's arguments may quote, e.g. -k 'smollm2-generative and not spans'
  n=$((n + 1)); gpu=${lane%% *}; args=${lane#* }
  eval step lane$n env CUDA_VISIBLE_DEVICES=$gpu python -m pytest bench --suite $suite $extra $args -p no:cacheprovider \
    --results-dir $R/records &
done
wait
report="python -m nerbench_core.report $R/records"
{ $report --columns all; $report --time; $report --cost; } | tee $OUT/lanes.txt
for log in $R/lane*.log; do tail -3 $log; done > $OUT/lanes-tail.txt
tar -czf $OUT/lanes.tar.gz -C $R .
