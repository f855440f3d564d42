#!/usr/bin/env bash
# Cases of a suite on the GPUs of one host, several lanes at once:
#   bash docs/gpu/lanes.sh SUITE "GPU [@SUITE] PYTEST-ARGS [;; [@SUITE] PYTEST-ARGS ...]" ["GPU ..." ...]
# e.g. bash docs/gpu/lanes.sh offline "0 -k smollm2-lora-bidir --seeds 42,43" "1 -k smollm2-generative"
#      bash docs/gpu/lanes.sh seed "0 -k qwen1.5-7b-generative --quick ;; @offline -k smollm2-generative"
# Each lane runs on GPU (CUDA_VISIBLE_DEVICES), its parts (split at ";;") one after the other, each part one
# `pytest bench --suite SUITE PYTEST-ARGS` process (a part's own @SUITE, else the script's); lanes run side by side,
# and lanes on one GPU share it (the small models are bound by their host process, not the GPU). Suite seed runs
# --synthetic (random weights in the exact architectures, no download). Every lane's records and predictions go to
# one results folder; the table, the time table and the cost table at the end; records, predictions and logs come
# back in $OUT/lanes.tar.gz.
suite=$1; shift
source docs/gpu/lib.sh
lane() {  # lane NUMBER "GPU PARTS"
  local n=$1 gpu=${2%% *} parts=${2#* } part part_suite k=0
  while [ -n "$parts" ]; do
    part=${parts%%;;*}; [[ $parts == *";;"* ]] && parts=${parts#*;;} || parts=""
    part=${part# }; part_suite=$suite
    if [[ $part == @* ]]; then part_suite=${part%% *}; part_suite=${part_suite#@}; part=${part#* }; fi
    local extra=$([ "$part_suite" = seed ] && echo --synthetic)
    k=$((k + 1))  # eval: a part's arguments may quote, e.g. -k 'smollm2-generative and not spans'
    eval step lane$n.$k env CUDA_VISIBLE_DEVICES=$gpu python -m pytest bench --suite $part_suite $extra $part \
      -p no:cacheprovider --results-dir $R/records
  done
}
n=0
for spec in "$@"; do
  n=$((n + 1)); lane $n "$spec" &
done
wait
report="python -m nerbench_core.report $R/records"
{ $report --columns all; $report --time; $report --cost; } | tee $OUT/lanes.txt
for log in $R/lane*.log; do echo "== $log"; tail -3 $log; done > $OUT/lanes-tail.txt
tar -czf $OUT/lanes.tar.gz -C $R .
