#!/usr/bin/env bash
# dub train MeanFlow samples/s, the bundled (demo_narrow) network against the one bundled before
# (tiny on demo-stack shards), interleaved, the foley recipe's flags with --compile, 400 steps
set -euo pipefail
. /tmp/fresh/bin/activate
W=WORK
T=OUT
cd $T
for rep in 1 2; do
  for preset in demo_narrow tiny; do
    name="meanflow-$preset-$rep"
    rm -rf "$T/runs/$name"
    s=$(date +%s)
    dub train -s "$W/shards" --name "$name" --storage "$T/runs" --objective meanflow --workers 1 --steps 400 \
      --batch-size 32 --lr 1e-3 --config "$W/train.toml" --checkpoint-every 400 --bf16 --compile --preset "$preset" --json > "$T/$name.json"
    echo "$name wall $(( $(date +%s) - s )) s"
  done
done
