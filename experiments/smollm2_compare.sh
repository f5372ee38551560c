#!/usr/bin/env bash
# ALTER against the two strongest baselines (NPO, GradDiff) on the real model, forget pair by forget pair: the
# reduced SmolLM2 protocol (experiments/smollm2_protocol.sh: 10 authors: the forget pair and the first 8 retain
# authors; first 40 items of every eval set) on pairs of TOFU forget10's authors (--forget-pair K; 9 is forget01's
# own pair); then the relearning attack (experiments/relearn.py) on the three and on the target and retain models.
# NPO and GradDiff are the baselines that kept utility and forgot on the toy's tuning and on the first real-model
# experiment (experiments/smollm2_tofu.sh). Every method runs at the protocol's settings (ALTER at
# the paper's learning rates, full-parameter methods at TOFU's 1e-5): the real model is not tuned. Resumable: each
# result is copied to results/smollm2_compare/ as it ends; a run recorded there with its attack, or finished in out/,
# is skipped.
# Usage: [MODEL=dir] [DATA=dir] [PAIRS="9 0 1"] [THREADS=0] bash experiments/smollm2_compare.sh
#   (about 50 minutes a pair on 2 CPU cores; two pairs side by side, THREADS=1 each: 95 minutes for both)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/smollm2_protocol.sh  # MODEL and the protocol's flags: common
common+=(--threads "${THREADS:-0}")
for k in ${PAIRS:-9 0 1}; do
  out=out/smollm2_compare/p$k
  res=results/smollm2_compare/p$k
  mkdir -p "$res"
  # recorded in results/ (metrics and the attack): done, in an earlier sitting too
  recorded() { python -c "import json, os, sys; r = '$res/relearn.json'
sys.exit(not (all(os.path.exists(f'$res/{n}.json') for n in sys.argv[1:]) and os.path.exists(r)
              and all(k in json.load(open(r)) for k in ['target', 'retain', *sys.argv[1:]])))" "$@"; }
  for spec in "alter" "npo --method npo" "gd --method gd"; do
    set -- $spec
    name=$1; shift
    recorded "$name" && continue
    if [ ! -f "$out/$name/metrics.json" ]; then
      echo "== pair $k: $name $*"
      python train.py "${common[@]}" --forget-pair "$k" --out "$out/$name" --overwrite "$@"
    fi
    cp "$out/$name/metrics.json" "$res/$name.json"
  done
  if ! recorded alter npo gd; then
    echo "== pair $k: relearning attack"
    python experiments/relearn.py "$out/alter" "$out/npo" "$out/gd" --out "$res/relearn.json" --threads "${THREADS:-0}"
  fi
done
python experiments/table.py results/smollm2_compare --per-group
python experiments/relearn.py --table results/smollm2_compare/p*/relearn.json | tee results/smollm2_compare/relearn.md
