# The reduced SmolLM2 TOFU protocol that every real-model experiment shares (sourced by smollm2_tofu.sh,
# smollm2_pairs.sh and smollm2_compare.sh): SmolLM2-135M-Instruct fine-tuned into a target on 10 authors (the
# forget pair and the first 8 retain authors; the retain model on the 8 alone), 5 epochs at 1e-4, batch 8;
# unlearning for 5 epochs; the first 40 items of every evaluation set.
# MODEL: hub id or checkpoint directory; DATA: a local copy of the benchmark files (default: the HF hub);
# CACHE: the folder of cached target/retain models and entropy profiles (default out/cache; an empty folder
# times the whole protocol)
MODEL=${MODEL:-HuggingFaceTB/SmolLM2-135M-Instruct}
local_dirs=(${DATA:+--data-dir "$DATA"} ${CACHE:+--cache "$CACHE"})
common=(--forget tofu_forget01 --model "$MODEL" "${local_dirs[@]}" --authors 10 --eval-limit 40
        --ft-epochs 5 --ft-lr 1e-4 --ft-batch-size 8 --epochs 5)
