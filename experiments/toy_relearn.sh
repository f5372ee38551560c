#!/usr/bin/env bash
# The relearning attack (experiments/relearn.py) on the toy: ALTER, NPO, GradDiff and RMU of every seed of
# experiments/toy_seeds.py (run it first), and each seed's target and retain models. One result file per seed
# (resumable), then one table: results/toy_relearn/table.md.
# Usage: [SEEDS="0 1 2 3 4"] [THREADS=0] bash experiments/toy_relearn.sh   (about 2 minutes a seed)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p results/toy_relearn
for s in ${SEEDS:-0 1 2 3 4}; do
  runs=()
  for m in alter npo gd rmu; do
    runs+=("out/toy_seeds/s$s/$m")
  done
  echo "== seed $s"
  python experiments/relearn.py "${runs[@]}" --out "results/toy_relearn/s$s.json" --threads "${THREADS:-0}"
done
python experiments/relearn.py --table results/toy_relearn/s*.json > results/toy_relearn/table.md
cat results/toy_relearn/table.md
