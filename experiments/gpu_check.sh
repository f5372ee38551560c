#!/usr/bin/env bash
# The check for a machine with one NVIDIA GPU and no network (PyTorch, tiktoken, transformers there; numpy,
# tqdm, scipy, rouge-score and their wheels may have to be carried: `pip download -d wheels -r requirements.txt`
# where there is a network, `pip install --no-index -f wheels -r requirements.txt` there):
#   1. the toy default on the GPU in bf16, both phases of ALTER, and its table;
#   2. bench.py on random-weight models of Llama-3.2-1B's and Llama-3.1-8B's shapes (bf16 weights): forward
#      and generation tokens/s against transformers, one training step of ALTER Phase II, AsymLoRA, plain LoRA
#      and full-parameter GradDiff (time and peak GPU memory).
# Everything printed is also written to results/bench/gpu_check_<device>.txt. Goal: under 8 minutes.
# Usage: bash experiments/gpu_check.sh                 # on the GPU machine
#        bash experiments/gpu_check.sh --device cpu    # smoke test: tiny shapes, a few steps (tests/)
set -euo pipefail
cd "$(dirname "$0")/.."
case "$*" in
  "" | "--device cuda") DEVICE=cuda ;;
  "--device cpu") DEVICE=cpu ;;
  *) echo "usage: bash experiments/gpu_check.sh [--device cuda|cpu]" >&2; exit 2 ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ "$DEVICE" = cpu ]; then
  toy=(--limit 8 --ft-epochs 1 --epochs 1 --eval-limit 2)
  shapes=(tiny)
  bench=(--batch 2 --tokens 32 --gen-batch 2 --gen-tokens 4 --repeats 2 --step-batch 8 --step-tokens 16)
  name=cpu
else
  toy=()
  shapes=(llama-3.2-1b llama-3.1-8b)
  bench=(--batch 8 --tokens 512 --gen-batch 8 --gen-tokens 64 --repeats 3 --step-batch 8 --step-tokens 256)
  name=$(python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
fi
mkdir -p "${OUT_DIR:-results/bench}"
log="${OUT_DIR:-results/bench}/gpu_check_$name.txt"
{
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo none)
  echo "# experiments/gpu_check.sh --device $DEVICE, $(date -u +%Y-%m-%dT%H:%MZ), git $commit"
  start=$(date +%s)
  echo "## 1. toy default on $DEVICE, bf16"
  python train.py --forget toy_forget10 --device "$DEVICE" --dtype bfloat16 --out "$tmp/toy" --cache "$tmp/cache" \
    --log-every 1000 ${toy[@]+"${toy[@]}"}
  for s in "${shapes[@]}"; do
    echo "## 2. bench.py --shape $s"
    python bench.py --shape "$s" --device "$DEVICE" --dtype bfloat16 --gpt2 skip --mc 0 "${bench[@]}"
  done
  echo "total $(( $(date +%s) - start )) s"
} 2>&1 | grep --line-buffered -v -E "it/s\]|s/it\]" | tee "$log"
