#!/usr/bin/env bash
# One cell of the ablation: train NAME on SHARDS for 800 MeanFlow steps x 32 (the foley recipe's
# flags), then generate the first 60 clips of the held-out test split with no prompt at one step and
# score them. EXTRA_TOML adds to the training config ('[meanflow]\ntime_mu = 1.5\n': the noise end).
#   run.sh NAME SHARDS FOLEY_WORK    (FOLEY_WORK: a scripts/foley_benchmark.sh folder, seed 0)
# The "before" features are those of commit ad132ca: run the cell from a checkout of it, with
# shards that `dub extract` of that checkout made.
set -euo pipefail
NAME=$1 SH=$2 F=$3
W=$PWD/$NAME; mkdir -p "$W"
printf 'warmup_steps = 100\nema_decay = 0.995\nlog_every = 50\n' > "$W/train.toml"
printf "${EXTRA_TOML:-}" >> "$W/train.toml"
dub train -s "$SH" --name "$NAME" --storage "$W/runs" --objective meanflow --workers 1 --steps 800 \
  --batch-size 32 --lr 1e-3 --config "$W/train.toml" --checkpoint-every 800 --bf16 --json > "$W/train.json"
M=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['model_path'])" "$W/train.json")
dub generate -m "$F/test-no-prompt.parquet" -o "$W/gen" --checkpoint "$M" -q --sampler meanflow --steps 1 --limit 60
dub report "$W/gen" -o "$W/report" --skip desync --no-html --json > /dev/null
