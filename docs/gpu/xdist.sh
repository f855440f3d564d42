#!/usr/bin/env bash
# Several GPUs on one host (issue 6): the synthetic seed suite (bert-base-cased, Qwen1.5-0.5B/1.8B/4B; exact
# architectures, random weights, quick sample, 4096-token batches) with pytest -n 0 against -n 2, same machine.
# (The numbers in docs/PERFORMANCE.md were taken when synthetic weights were still written to disk first.)
set -uo pipefail
mkdir -p /tmp/site && tar -xJf .device/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
export NERBENCH_DATA_DIR=$PWD/.device/data/conll2003 NERBENCH_TOKENIZERS=$PWD/.device/tokenizers
export NERBENCH_CACHE_DIR=/tmp/nbcache PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi -L | tee $OUT/gpu.txt
cases="bert-base-cased or qwen1.5-0.5b or qwen1.5-1.8b or qwen1.5-4b"
for n in 0 2; do
  start=$(date +%s.%N)
  python -m pytest bench --quick --synthetic --suite seed -k "$cases" --rerun -n $n -p no:cacheprovider \
    --set batch_size=512 --set max_tokens_per_batch=4096 --results-dir $OUT/n$n > $OUT/n$n.log 2>&1
  echo "-n $n: rc $? wall $(echo "$(date +%s.%N) - $start" | bc) s" | tee -a $OUT/walls.txt
  grep -A8 "nerbench results" $OUT/n$n.log | cut -c1-40,150-260
done
cat $OUT/walls.txt
