#!/usr/bin/env bash
# Real-model evaluation of SmolLM2-135M-Instruct (not fine-tuned) on the benchmarks.
# Usage: [MODEL=dir] [DATA=dir] bash experiments/smollm2_eval.sh   (~20 min on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
# MODEL: hub id or checkpoint directory; DATA: a local copy of the benchmark files (default: the HF hub)
MODEL=${MODEL:-HuggingFaceTB/SmolLM2-135M-Instruct}
data=(${DATA:+--data-dir "$DATA"})
mkdir -p results/smollm2
# MMLU: first 20 questions of each of the 57 subjects (1,140 questions), zero-shot, lm-eval's prompt
time python evaluate.py --model "$MODEL" --bench mmlu --per-subject 20 "${data[@]}" \
  --out results/smollm2/mmlu
# WMDP v1 bio and cyber: first 300 questions of each
time python evaluate.py --model "$MODEL" --bench wmdp_bio,wmdp_cyber --limit 300 "${data[@]}" \
  --out results/smollm2/wmdp
# TOFU forget10 metrics of the model that never saw TOFU: first 100 items of every set, with open-unlearning's
# attention mask (the default) and with a padding-only mask, to show what the mask rule changes
time python evaluate.py --model "$MODEL" --bench tofu_forget10 --limit 100 "${data[@]}" \
  --out results/smollm2/tofu
time python evaluate.py --model "$MODEL" --bench tofu_forget10 --limit 100 "${data[@]}" --mask padding \
  --out results/smollm2/tofu_padding
# MUSE-News KnowMem, VerbMem, PrivLeak: first 25 items of every set
time python evaluate.py --model "$MODEL" --bench muse_news --limit 25 "${data[@]}" \
  --out results/smollm2/muse
