#!/usr/bin/env bash
# Speed benchmark on one GPU (issue 5): bert-base-cased and Qwen1.5-7B QLoRA, exact architectures with random
# weights, on the real CoNLL-2003 text (quick sample), through the plain-HF baseline and nerbench's set-ups.
# Same set-up as docs/gpu/backends.sh; writes records and logs under $OUT.
set -uo pipefail
mkdir -p /tmp/site && tar -xJf .device/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
export NERBENCH_DATA_DIR=$PWD/.device/data/conll2003 NERBENCH_TOKENIZERS=$PWD/.device/tokenizers
export NERBENCH_CACHE_DIR=/tmp/nbcache PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpu.txt
python -m nerbench_core.perf bert-base-cased ${PERF_CASES:-qwen1.5-7b} --synthetic --out $OUT/perf "$@" \
  > $OUT/perf.log 2>&1
tail -14 $OUT/perf.log
