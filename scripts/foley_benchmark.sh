#!/usr/bin/env bash
# Reproduces the bundled default model (model/assets/default/mf_mjt_demo.safetensors) and the
# foley-synth sync table in the README: data -> ingest -> extract -> train (MeanFlow and a
# flow-matching baseline with the same budget) -> generate on the held-out test split -> report.
#
#   scripts/foley_benchmark.sh [WORK_DIR]        (default ./runs/foley-benchmark; ~45 min on 2 CPU cores)
#
# Every step is a plain `dub` command; each is skipped when its output already exists, so the
# script resumes after an interruption.
set -euo pipefail
W=$(realpath -m "${1:-runs/foley-benchmark}")
mkdir -p "$W"
TRAIN_FLAGS=(--workers 1 --steps 2000 --batch-size 12 --lr 5e-4 --warmup 100 --checkpoint-every 500
             --log-every 50 --ema 0.995)

[ -f "$W/foley/index.parquet" ] || dub dataset foley-synth -o "$W/foley" --seed 0 --train 240 --val 16 --test 40
[ -f "$W/train.parquet" ] || dub ingest "$W/foley/train/audio" -o "$W/train.parquet" -q
[ -f "$W/test.parquet" ] || dub ingest "$W/foley/test/silent" -o "$W/test.parquet" -q
[ -f "$W/shards/summary.json" ] || dub extract -m "$W/train.parquet" -o "$W/shards" --shard-size 64

for objective in meanflow flow-matching; do
  [ -f "$W/$objective.json" ] || dub train -s "$W/shards" --name "demo-$objective" --storage "$W/runs" \
      --objective "$objective" "${TRAIN_FLAGS[@]}" --json > "$W/$objective.json"
done
model_of() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['model_path'])" "$W/$1.json"; }
MF=$(model_of meanflow)
FM=$(model_of flow-matching)

gen() {  # name checkpoint flags...
  local name=$1 ckpt=$2; shift 2
  [ -f "$W/gen-$name/summary.json" ] || dub generate -m "$W/test.parquet" -o "$W/gen-$name" --checkpoint "$ckpt" -q "$@"
  [ -f "$W/report-$name/summary.json" ] || dub report "$W/gen-$name" -o "$W/report-$name" --no-html --json > /dev/null
}
gen meanflow-1 "$MF" --sampler meanflow --steps 1
gen flowmatch-1 "$FM" --sampler euler --steps 1
gen flowmatch-25 "$FM" --sampler euler --steps 25

# Ground truth: the test clips' own recorded audio, scored by the same report.
python3 - "$W" <<'EOF'
import sys
from pathlib import Path

import pyarrow as pa

from manifests.io import read_manifest, write_parquet_atomic
from manifests.schema import REPORT_SCHEMA

w = Path(sys.argv[1])
rows = []
for r in read_manifest(w / "test.parquet").to_pylist():
    silent = Path(r["path"])
    with_audio = silent.parent.parent / "audio" / silent.name
    rows.append({"video_id": r["video_id"], "path": str(silent), "status": "done", "output_mp4": str(with_audio)})
(w / "gen-ground-truth").mkdir(exist_ok=True)
write_parquet_atomic(pa.Table.from_pylist(rows, schema=REPORT_SCHEMA), w / "gen-ground-truth" / "report.parquet")
EOF
[ -f "$W/report-ground-truth/summary.json" ] || dub report "$W/gen-ground-truth" -o "$W/report-ground-truth" --no-html --json > /dev/null

python3 - "$W" <<'EOF'
import json
import sys
from pathlib import Path

w = Path(sys.argv[1])
print("| audio | onset F1 (±50 ms) | onset precision | onset recall | onset AP | onset acc | AV-Align |")
print("|---|---|---|---|---|---|---|")
for name, label in [("ground-truth", "ground-truth recording"), ("meanflow-1", "MF-MJT (MeanFlow), 1 step"),
                    ("flowmatch-1", "flow matching, 1 step"), ("flowmatch-25", "flow matching, 25 Euler steps")]:
    m = json.loads((w / f"report-{name}" / "summary.json").read_text())["metrics"]
    cell = lambda k: "n/a" if m.get(k + '_mean') is None else f"{m[k + '_mean']:.3f}"
    print(f"| {label} | {cell('onset_f1')} | {cell('onset_precision')} | {cell('onset_recall')} | "
          f"{cell('onset_ap')} | {cell('onset_acc')} | {cell('av_align')} |")
EOF
