#!/usr/bin/env bash
# Real-model evaluation of SmolLM2-135M-Instruct (not fine-tuned) on the benchmarks.
# Usage: [MODEL=dir] [DATA=dir] [OUT=dir] [DTYPE=float32|bfloat16] bash experiments/smollm2_eval.sh
# (~20 min on 2 CPU cores in float32; DTYPE default: evaluate.py's auto, bf16 on a CPU with native bf16)
set -euo pipefail
cd "$(dirname "$0")/.."
# MODEL: hub id or checkpoint directory; DATA: a local copy of the benchmark files (default: the HF hub)
MODEL=${MODEL:-HuggingFaceTB/SmolLM2-135M-Instruct}
data=(${DATA:+--data-dir "$DATA"} ${DTYPE:+--dtype "$DTYPE"})
OUT=${OUT:-results/smollm2}
mkdir -p "$OUT"
# MMLU: first 20 questions of each of the 57 subjects (1,140 questions), zero-shot, lm-eval's prompt
time python evaluate.py --model "$MODEL" --bench mmlu --per-subject 20 "${data[@]}" \
  --out "$OUT"/mmlu
# WMDP v1 bio and cyber: first 300 questions of each
time python evaluate.py --model "$MODEL" --bench wmdp_bio,wmdp_cyber --limit 300 "${data[@]}" \
  --out "$OUT"/wmdp
# TOFU forget10 metrics of the model that never saw TOFU: first 100 items of every set, with open-unlearning's
# attention mask (the default) and with a padding-only mask, to show what the mask rule changes
time python evaluate.py --model "$MODEL" --bench tofu_forget10 --limit 100 "${data[@]}" \
  --out "$OUT"/tofu
time python evaluate.py --model "$MODEL" --bench tofu_forget10 --limit 100 "${data[@]}" --mask padding \
  --out "$OUT"/tofu_padding
# MUSE-News KnowMem, VerbMem, PrivLeak: first 25 items of every set
time python evaluate.py --model "$MODEL" --bench muse_news --limit 25 "${data[@]}" \
  --out "$OUT"/muse
