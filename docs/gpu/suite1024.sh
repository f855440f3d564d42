#!/usr/bin/env bash
# Issue 5: the synthetic seed suite's cases at their defaults (3 epochs, dev scored each epoch, test once, model
# build included), one after another on one GPU: `bash docs/gpu/suite1024.sh CASE...` (the device's 10-minute calls
# take two or three cases each; the report adds them up over the calls' records).
R=${R:-/tmp/suite1024}; mkdir -p $R
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
for case in "$@"; do
  step $case python -m pytest bench --synthetic --suite seed --rerun -q -p no:cacheprovider -k $case --label suite \
    --results-dir $R/suite
done
{ python -m nerbench_core.report $R/suite --time; python -m nerbench_core.report $R/suite --cost; } | tee $OUT/suite.txt
tar -czf $OUT/suite.tar.gz -C $R .
