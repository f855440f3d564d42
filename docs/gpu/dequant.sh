#!/usr/bin/env bash
# Issue 5, stop 13 (one GPU): weights kept dequantized and causal layers without a padding mask. The GPU tests, then
# the 7B through the plain baseline, the default dequantizing at every step (`dequantize`, stop 12's default) and the
# default (one whole epoch), then torch.profiler of the default's replayed steps 40-42.
R=${R:-/tmp/dequant}; mkdir -p $R /tmp/gg
[ -f .gga/part ] && cp .gga/part /tmp/gg/a  # the GGUF file's first part, for docs/gpu/offline_full.sh next
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
step gpu-tests python -m pytest tests/test_cuda_graphs.py tests/test_lora_kernels.py tests/test_decoder.py -q \
  -p no:cacheprovider -k "not resumes"
step 7b python -m nerbench_core.perf --synthetic --out $R/perf qwen1.5-7b --variants baseline,dequantize,default \
  --steps baseline=40,dequantize=100
seed_case 7b-profile qwen1.5-7b --set max_steps=43 --profile $R/profile
python -m nerbench_core.report $R/perf/* --cost --baseline baseline | tee $OUT/bench.txt
tail -3 $R/gpu-tests.log > $OUT/gpu-tests.txt; cp -r $R/profile $OUT/ 2>/dev/null
tar -czf $OUT/dequant.tar.gz -C $R .
