#!/usr/bin/env bash
# ALTER's routing on the real model, forget pair by forget pair: the reduced SmolLM2 protocol of
# experiments/smollm2_protocol.sh (10 authors: the forget pair and the first 8 retain authors; first 40 items of every
# eval set), on pairs of TOFU forget10's authors (--forget-pair K; 9 is forget01's own pair). For each pair: ALTER
# as it is (prefix router), its adapter re-evaluated with the oracle and router gates, and ALTER with the token-only
# router at the experts' learning rate (the router before the fix). Resumable: a finished run (metrics.json) is
# skipped, and each one's metrics are copied to results/smollm2_pairs/ as soon as it ends.
# Usage: [MODEL=dir] [DATA=dir] [PAIRS="9 0"] bash experiments/smollm2_pairs.sh   (about 40 minutes a pair, 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/smollm2_protocol.sh  # MODEL and the protocol's flags: common
for k in ${PAIRS:-9 0}; do
  out=out/smollm2_pairs/p$k
  res=results/smollm2_pairs/p$k
  mkdir -p "$res"
  for spec in "alter" "alter-token-router --router-input token --lr-router 1e-3"; do
    set -- $spec
    name=$1; shift
    if [ ! -f "$out/$name/metrics.json" ]; then
      echo "== pair $k: $name $*"
      python train.py "${common[@]}" --forget-pair "$k" --out "$out/$name" --overwrite "$@"
    fi
    cp "$out/$name/metrics.json" "$res/$name.json"
    if [ "$name" = alter ]; then  # the same adapter under the other gates
      for gate in oracle router; do
        if [ ! -f "$out/alter/$gate/metrics.json" ]; then
          echo "== pair $k: alter, $gate gate"
          python evaluate.py --adapter "$out/alter" --gate "$gate" --out "$out/alter/$gate"
        fi
        cp "$out/alter/$gate/metrics.json" "$res/alter-$gate-gate.json"
      done
    fi
  done
done
python experiments/routing_table.py results/smollm2_pairs > results/smollm2_pairs/table.md
cat results/smollm2_pairs/table.md
