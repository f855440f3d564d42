#!/usr/bin/env bash
# GPU check of the decoder path (issue 3): a short QLoRA run of a Qwen2-architecture model (the exact
# Qwen1.5-0.5B shape, random weights) on the real CoNLL-2003 text, through the hf and the unsloth backend,
# each in its own process, plus bert-base-cased (exact shape, random weights) on the hf path.
# Expects the packed site (../shared/tools/device-site) and tokenizers (python -m nerbench_core.synthetic
# export-tokenizers .device/tokenizers) under .device/. Writes records and logs under $OUT.
set -uo pipefail
mkdir -p /tmp/site && tar -xJf .device/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
export NERBENCH_DATA_DIR=$PWD/.device/data/conll2003 NERBENCH_TOKENIZERS=$PWD/.device/tokenizers
export NERBENCH_CACHE_DIR=/tmp/nbcache PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python -c "import torch, transformers, peft, bitsandbytes; print(torch.__version__, transformers.__version__, peft.__version__, bitsandbytes.__version__)"
for backend in hf unsloth; do
  python -m pytest bench --quick --synthetic --suite seed -k "qwen1.5-0.5b" --backend $backend \
    --results-dir $OUT/records -p no:cacheprovider -q 2>&1 | tee $OUT/$backend.log | grep -v "^Unsloth\|^==((\|^   \\\\\|^O^O\|^\\\\" | tail -12
done
python -m pytest bench --quick --synthetic --suite seed -k "bert-base-cased" --results-dir $OUT/records \
  -p no:cacheprovider -q 2>&1 | tee $OUT/bert.log | tail -6
