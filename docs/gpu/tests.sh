#!/usr/bin/env bash
# The project's tests on a GPU machine, as a user runs them: plain `pytest` (no -n) with every GPU visible (one
# process must use one GPU: on two cards the Trainer once wrapped the model in DataParallel and failed), then a
# synthetic benchmark case the same way, then the same case under -n with one worker per GPU.
source docs/gpu/lib.sh
# test_seeded_dropout early: in one process, captures after the unsloth and torch.compile tests have failed
# (docs/PERFORMANCE.md, section 6)
step tests python -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py tests/test_seeded_dropout.py tests/test_decoder.py \
  tests/test_lora_kernels.py tests/test_triton_kernels.py tests/test_measurement.py tests/test_saved_case.py tests/test_generative.py \
  tests/test_packing.py tests/test_fp8.py tests/test_bnb_step.py
step bench-plain python -m pytest bench --synthetic --suite seed -k bert-base-cased --quick --rerun -p no:cacheprovider \
  --set max_steps=30 --results-dir $R/plain
step bench-xdist python -m pytest bench --synthetic --suite seed -k "bert-base-cased or qwen1.5-0.5b" --quick --rerun \
  -p no:cacheprovider --set max_steps=30 -n $(nvidia-smi -L | wc -l) --results-dir $R/xdist
for log in tests bench-plain bench-xdist; do echo "== $log"; grep -E "passed|failed|error|nerbench " $R/$log.log | tail -8; done \
  | tee $OUT/tests.txt
