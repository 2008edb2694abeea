#!/usr/bin/env bash
# One command for the GPU machine (run from anywhere; it works in the repo root):
#   bash scripts/gpu_bench.sh                      # cuda, small_16k, batch 8: the issue's GPU set
#   bash scripts/gpu_bench.sh --device cpu --preset tiny --batch-size 2 --repeats 1   # CPU smoke test
# Extra arguments go to scripts/gpu_bench.py (--parts, --budget-s, --no-compile, ...).
# It (a) installs the wheels carried in .whl/ (open_clip_torch, ftfy, wcwidth, av) when open_clip is
# missing, (b) runs every sub-benchmark and (c) the fast-vs-eager checks, each part in its own
# process under one time budget, and (d) writes $OUT/gpu_bench.json and $OUT/gpu_bench.log.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT_DIR="${OUT:-out/gpu_bench}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
if ! python3 -c "import open_clip" >/dev/null 2>&1 && ls .whl/*.whl >/dev/null 2>&1; then
    echo "installing carried wheels: $(ls .whl | tr '\n' ' ')"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/dub-site .whl/*.whl && export PYTHONPATH="/tmp/dub-site${PYTHONPATH:+:$PYTHONPATH}"
fi
source scripts/dub_on_path.sh
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# the python budget (440 s by default) plus this margin keeps the whole call under 8 minutes
timeout --kill-after=10 "${GPU_BENCH_TIMEOUT_S:-465}" python3 scripts/gpu_bench.py --out "$OUT_DIR" "$@" 2>&1 \
    | tee "$OUT_DIR/gpu_bench.log"
status=${PIPESTATUS[0]}
echo "gpu_bench exit status $status; results in $OUT_DIR/gpu_bench.json"
exit "$status"
