# Sourced by the docs/gpu scripts, run from the repository root on the GPU machine with .device carried:
# unpacks the packages that machine lacks, points nerbench at the carried data and offline tokenizers, and
# gives `step NAME COMMAND...`, which runs COMMAND (log in $R/NAME.log) only while the call's time budget
# (BUDGET_S seconds from sourcing) lasts, so that the summary at the end always comes back.
set -uo pipefail
mkdir -p /tmp/site && tar -xJf .device/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
export NERBENCH_DATA_DIR=$PWD/.device/data/conll2003 NERBENCH_TOKENIZERS=$PWD/.device/tokenizers
export NERBENCH_CACHE_DIR=/tmp/nbcache PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
deadline=$(( $(date +%s) + ${BUDGET_S:-540} ))
step() {
  local name=$1 left=$(( deadline - $(date +%s) )); shift
  [ $left -gt 40 ] || { echo "$name: not started (time)" | tee -a $OUT/steps.txt; return; }
  local t0=$(date +%s); timeout $left "$@" > $R/$name.log 2>&1
  echo "$name: rc=$? $(( $(date +%s) - t0 )) s" | tee -a $OUT/steps.txt
}
# The synthetic seed suite (`$seed -k CASE ...`); one epoch of its cases: `seed_case LABEL CASE ARGS...` runs CASE as
# step LABEL, its record in $R/records; `$seed1` is the same command, for lanes that need something in front of it.
seed="python -m pytest bench --synthetic --suite seed --rerun -q -p no:cacheprovider"
seed1="$seed --set epochs=1"
seed_case() { local label=$1 case=$2; shift 2; step $label $seed1 -k $case --label $label --results-dir $R/records "$@"; }
# The suite's cases at their defaults (3 epochs), one step each, labelled "suite", records in $R/suite.
suite_cases() { local case; for case in "$@"; do step $case $seed -k $case --label suite --results-dir $R/suite; done; }
