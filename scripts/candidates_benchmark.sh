#!/usr/bin/env bash
# Best-of-N on foley-synth's held-out clips: `dub generate --candidates N` for N = 1, 2, 4, 8 with
# the bundled model (one step, the bundle's guidance, no prompt: the look must decide), each
# scored by `dub report` against the known event times, then one table with bootstrap CIs:
#
#   scripts/candidates_benchmark.sh WORK [FOLEY_DATASET]      (N_CLIPS=100 by default)
#
# FOLEY_DATASET is a `dub dataset foley-synth` folder (made here with seed 0 when not given).
# Outputs: WORK/table.json, WORK/table.md, WORK/loudness.json (every --loudness -23 output metered), WORK/timing.json (wall time per clip of each run, and
# the --dry-run estimate made before it on the same machine).
set -euo pipefail
W=$(realpath -m "${1:-runs/candidates-benchmark}")
DATA=${2:-$W/foley}
N_CLIPS=${N_CLIPS:-100}
mkdir -p "$W"
[ -f "$DATA/index.parquet" ] || dub dataset foley-synth -o "$DATA" --seed 0 --train 1 --val 1 --test "$N_CLIPS" \
    -j "$(nproc)"
[ -f "$W/test.parquet" ] || dub ingest "$DATA/test/silent" -o "$W/test.parquet" -q
[ -f "$W/test-no-prompt.parquet" ] || python3 -m dub.workflows.bench.no_prompt "$W/test.parquet" "$W/test-no-prompt.parquet"
labels=()
for n in 1 2 4 8; do
  # the dry run's estimate first, then the run it estimates (same flags, same machine)
  [ -f "$W/dry-n$n.json" ] || dub generate -m "$W/test-no-prompt.parquet" -o "$W/gen-n$n" \
      --candidates "$n" --limit "$N_CLIPS" --dry-run --json > "$W/dry-n$n.json"
  [ -f "$W/gen-n$n/summary.json" ] || dub generate -m "$W/test-no-prompt.parquet" -o "$W/gen-n$n" \
      --candidates "$n" --limit "$N_CLIPS" --json > "$W/gen-n$n.json"
  [ -f "$W/report-n$n/summary.json" ] || dub report "$W/gen-n$n" -o "$W/report-n$n" --backend logmel \
      --skip desync --skip clap --skip ib --no-html --json > "$W/report-n$n.json"
  labels+=("best-of-$n=$W/report-n$n")
done
python3 -m dub.workflows.bench.foley_table "${labels[@]}" --json "$W/table.json" | tee "$W/table.md"
# --loudness: every output of a one-candidate run at -23 LUFS, metered by ffmpeg's EBU R128 filter
[ -f "$W/gen-loudness/summary.json" ] || dub generate -m "$W/test-no-prompt.parquet" -o "$W/gen-loudness" \
    --loudness -23 --limit "$N_CLIPS" --json > "$W/gen-loudness.json"
python3 -m dub.workflows.bench.loudness_check "$W/gen-loudness" --target -23 --json "$W/loudness.json"
python3 - "$W" <<'PY' | tee "$W/timing.json"
import json
import sys
from pathlib import Path

w = Path(sys.argv[1])
rows = {}
for n in (1, 2, 4, 8):
    s = json.loads((w / f"gen-n{n}" / "summary.json").read_text())
    r = json.loads((w / f"report-n{n}" / "summary.json").read_text())
    dry = json.loads((w / f"dry-n{n}.json").read_text())
    rows[f"best-of-{n}"] = {"clips": s["generated"], "wall_s": round(s["wall_s"], 1),
                            "wall_s_per_clip": round(s["wall_s"] / max(1, s["generated"]), 3),
                            "dry_run_estimate_s": dry["estimated_wall_s"] and round(dry["estimated_wall_s"], 1),
                            "selection": r.get("candidate_selection")}
print(json.dumps(rows, indent=2))
PY
