#!/bin/bash
# Every drift scenario on MovieLens 1M for seeds 0 1 2, then the tables and plots of docs/drift.md.
# Skips runs whose results.json exists, so it can be resumed. ~95 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/drift}
SCENARIOS=${SCENARIOS:-"flip-sudden label-shift cold-start flip-gradual recurring flip-users"}
mkdir -p "$OUT"
for seed in 0 1 2; do
  for scenario in $SCENARIOS; do
    run="$OUT/ml1m-$scenario-s$seed"
    [ -f "$run/results.json" ] && continue
    .venv/bin/reloop2 bench --dataset ml-1m --scenario "$scenario" --seed "$seed" \
      --output "$run" > "$run.log" 2>&1
  done
done
.venv/bin/python benchmarks/drift_table.py "$OUT" --dataset ml1m --scenarios $SCENARIOS --plots "$OUT"
