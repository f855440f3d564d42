#!/usr/bin/env bash
# Issue 5: Qwen1.5-14B of the synthetic seed suite at its defaults for one epoch (its three do not fit a 10-minute
# device call), on one GPU: build, training, dev and test scoring, for its share of the suite's time.
R=${R:-/tmp/epoch14b}; mkdir -p $R
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
step 14b-epoch python -m pytest bench --synthetic --suite seed --rerun -q -p no:cacheprovider -k qwen1.5-14b \
  --set epochs=1 --label suite-1-epoch --results-dir $R/suite14
{ python -m nerbench_core.report $R/suite14 --time; python -m nerbench_core.report $R/suite14 --cost; } | tee $OUT/epoch14b.txt
tar -czf $OUT/epoch14b.tar.gz -C $R .
