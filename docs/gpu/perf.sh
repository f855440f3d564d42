#!/usr/bin/env bash
# The speed benchmark (one GPU): a case through several training set-ups, one process each on the same GPU and data:
#   bash docs/gpu/perf.sh CASE VARIANTS [STEPS]      e.g. bash docs/gpu/perf.sh qwen1.5-7b baseline,default baseline=40
# (variants: nerbench_core/perf.py). The default over one whole epoch, so that its graph captures are paid in it.
source docs/gpu/lib.sh
step perf-$1 python -m nerbench_core.perf --synthetic --out $R/perf $1 --variants $2 ${3:+--steps $3}
python -m nerbench_core.report $R/perf/* --cost --baseline baseline | tee -a $OUT/perf.txt
tar -czf $OUT/perf.tar.gz -C $R perf
