#!/usr/bin/env bash
# The toy benchmark's table: every method in methods.METHODS and ALTER's ablations on the same seed, then one
# table. Usage: bash experiments/toy_table.sh [extra train.py flags]   (about 15 minutes on 2 CPU cores)
# OUT (default out/toy_table) and TABLE (default results/toy_table.md) place the runs and the table (the routing
# table to results/toy_table_routing/, after TABLE), e.g.
#   OUT=out/toy_table_bf16 TABLE=results/toy_table_bf16.md bash experiments/toy_table.sh --dtype bfloat16
set -euo pipefail
cd "$(dirname "$0")/.."
extra=("$@")
out=${OUT:-out/toy_table}
table=${TABLE:-results/toy_table.md}
mkdir -p "$out"
runs=()
for m in $(python -c "from methods import METHODS; print(' '.join(METHODS))"); do
  runs+=("$m --method $m")
done
runs+=(
  "alter-no-phase1 --no-phase1"
  "alter-no-struct --lam 0"
  "alter-shannon --q 1"
  "alter-soft-gates --train-gate soft"
  "alter-router-gate --gate router"
  "alter-a-position --a-grad position"
  "alter-oracle-gate --gate oracle"
  "alter-token-router --router-input token --lr-router 1e-3"
  "alter-token-router-fast --router-input token"
  "alter-router-slow --lr-router 1e-3"
)
for spec in "${runs[@]}"; do
  set -- $spec
  name=$1; shift
  echo "== $name"
  python train.py --forget toy_forget10 --model tiny --out "$out/$name" --overwrite "$@" "${extra[@]}" > "$out/$name.log"
  tail -n 3 "$out/$name.log"
done
python experiments/collect.py "$out" > "$table"
cat "$table"
# how ALTER routes under each gate and router (README, "Where ALTER's forgetting comes from"): the runs' metrics,
# and the token-router run's adapter again under the oracle gate
routing=${table%.md}_routing
mkdir -p "$routing/toy"
python evaluate.py --adapter "$out/alter-token-router" --gate oracle --out "$out/alter-token-router/oracle" | tail -n 1
cp "$out/alter-token-router/oracle/metrics.json" "$routing/toy/alter-token-router-oracle-gate.json"
for r in alter alter-router-gate alter-oracle-gate alter-token-router alter-token-router-fast alter-router-slow; do
  cp "$out/$r/metrics.json" "$routing/toy/$r.json"
done
python experiments/routing_table.py "$routing" > "$routing/table.md"
(cd "$out" && grep -H "step 0120" alter*.log) > "$routing/last_step.txt"  # the last step's loss parts
cat "$routing/table.md"
