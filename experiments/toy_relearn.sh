#!/usr/bin/env bash
# The relearning attack (experiments/relearn.py) on the toy: ALTER, NPO, GradDiff and RMU of every seed of
# experiments/toy_seeds.py (run it first), and each seed's target and retain models. One result file per seed
# (resumable), then one table: results/toy_relearn/table.md. First the calibration of the attack's learning rate on
# the validation world of experiments/toy_tune.py (its ALTER run at the selected setting; run toy_tune.py first):
# results/toy_relearn/calibration.md, the attack at 1e-4 ... 3e-3 (relearn.py's default is a tenth of --ft-lr, 3e-4).
# Usage: [SEEDS="0 1 2 3 4"] [THREADS=0] bash experiments/toy_relearn.sh   (about 2 minutes a seed)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p results/toy_relearn
setting=$(python -c "import json; print(json.load(open('results/toy_tune/selected.json'))['alter']['setting'])")
run=out/toy_tune/alter/$setting
for lr in 1e-4 3e-4 1e-3 3e-3; do
  python experiments/relearn.py "$run" --lr "$lr" --out "results/toy_relearn/calibration_lr$lr.json" \
    --threads "${THREADS:-0}"
done
for lr in 1e-4 3e-4 1e-3 3e-3; do
  printf '\nattack learning rate %s\n\n' "$lr"
  python experiments/relearn.py --table "results/toy_relearn/calibration_lr$lr.json"
done > results/toy_relearn/calibration.md
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
