#!/usr/bin/env bash
# Every GPU check in one run (about 10 minutes; the wheels it needs in .whl/), results under $OUT:
#   bash scripts/gpu_checks.sh
# 1. scripts/sync_attention_bench.py (<= 75 s): Synchformer's Triton divided attention against
#    the SDPA form, per attention and over the whole model, with errors against float32;
# 2. scripts/clip_kernels_bench.py (<= 70 s): where CLIP's FP8 time goes (SDPA backends, FP8
#    matmul, quantisation, bias, fast accumulation);
# 3. scripts/gpu_bench.sh with the rest (at least 430 s; what steps 1-2 leave unused is added),
#    parts in order of value; media (the host's decoding capacity) needs PyAV in .whl/.
# Each step's timeout keeps the total under 600 s (GPU_CHECKS_S, default 585, is the whole
# script's share); a step that fails does not stop the next.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:-out/gpu_checks}"
export OUT
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
source scripts/dub_on_path.sh
timeout --kill-after=5 75 python3 scripts/sync_attention_bench.py --out "$OUT" 2>&1 | tee "$OUT/sync_attention.log"
timeout --kill-after=5 70 python3 scripts/clip_kernels_bench.py --budget-s 55 --out "$OUT" 2>&1 \
    | tee "$OUT/clip_kernels.log"
left=$(( ${GPU_CHECKS_S:-585} - SECONDS ))
echo "gpu_checks: ${SECONDS} s used by steps 1-2, ${left} s left for gpu_bench"
GPU_BENCH_BUDGET_S="${GPU_BENCH_BUDGET_S:-$(( left - 15 ))}" GPU_BENCH_TIMEOUT_S="${GPU_BENCH_TIMEOUT_S:-$left}" \
    bash scripts/gpu_bench.sh --parts "${GPU_BENCH_PARTS:-generate,train-step-like-for-like,e2e-fp8,media,correctness,train-step-like-for-like-compiled,e2e-fp8-all,e2e-compiled}" "$@"
