#!/usr/bin/env bash
# Text unlearning on the toy benchmark (WMDP/MUSE-like): forget the biographies of the 4 forget people with
# every method in methods.METHODS, then one table.
# Usage: bash experiments/toy_text_table.sh   (about 12 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
for method in $(python -c "from methods import METHODS; print(' '.join(METHODS))"); do
  echo "== $method"
  python train.py --forget toy_text --model tiny --method "$method" --out "out/toy_text_table/$method" --overwrite \
    "$@" | tail -n 1
done
python experiments/collect.py out/toy_text_table mc_forget_acc mc_retain_acc general_acc model_utility \
  forget_verbmem_ROUGE muse_privleak forget_Q_A_ROUGE train_seconds trainable_params > results/toy_text_table.md
cat results/toy_text_table.md
mkdir -p results/toy_text_table_routing  # how ALTER's gate routed (README, "Text unlearning")
cp out/toy_text_table/alter/metrics.json results/toy_text_table_routing/alter.json
