#!/usr/bin/env bash
# Issue 5, the per-step host cost at the decoders' 1,024-token default (one GPU): the perf benchmark of the 0.5B and
# the 7B with the fused LoRA projections (default), with peft's own LoRA layers, and without liger-kernel; the 7B's
# plain baseline beside them; then torch.profiler and cProfile (--profile) of both at the default.
R=${R:-/tmp/lora}; mkdir -p $R
source docs/gpu/lib.sh
nvidia-smi -L | tee $OUT/gpu.txt
perf="python -m nerbench_core.perf --synthetic --out $R/perf"
step 0.5b-perf $perf qwen1.5-0.5b --variants default,peft-lora,no-liger --steps default=150,peft-lora=150,no-liger=150
step 7b-perf $perf qwen1.5-7b --variants baseline,default,peft-lora --steps baseline=40,default=120,peft-lora=80
seed_case 0.5b-profile qwen1.5-0.5b --set max_steps=10 --profile $R/profile
seed_case 7b-profile qwen1.5-7b --set max_steps=10 --profile $R/profile
python -m nerbench_core.report $R/perf/* --cost --baseline baseline | tee $OUT/lora.txt
tar -czf $OUT/lora.tar.gz -C $R .
