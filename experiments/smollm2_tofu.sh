#!/usr/bin/env bash
# Real-model TOFU unlearning on 2 CPU cores: SmolLM2-135M-Instruct, real TOFU data, a reduced protocol
# (README, "Real model, real TOFU"): target fine-tuned on 10 authors (the 2 forget01 authors and the first
# 8 retain authors), retain reference on the 8 alone; forget01 unlearned; first 40 items of every eval set.
# Usage: [MODEL=dir] [DATA=dir] [CACHE=dir] bash experiments/smollm2_tofu.sh   (1.3 hours on 2 CPU cores: models
# that unlearn badly answer every question with 200 tokens, which makes their evaluation the slowest part)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/smollm2_protocol.sh  # MODEL and the protocol's flags: common
runs=(
  "alter"
  "asymlora --method asymlora"
  "lora --method lora"
  "npo --method npo"
  "gd --method gd"
  "ga --method ga"
  "alter-no-phase1 --no-phase1"
)
mkdir -p results/smollm2_tofu
for spec in "${runs[@]}"; do
  set -- $spec
  name=$1; shift
  echo "== $name $*"
  python train.py "${common[@]}" --out "out/smollm2_tofu/$name" --overwrite "$@"
done
python experiments/collect.py out/smollm2_tofu forget_quality model_utility forget_truth_ratio forget_Q_A_ROUGE \
  retain_Q_A_ROUGE train_seconds trainable_params > results/smollm2_tofu/table.md
cat results/smollm2_tofu/table.md
