#!/usr/bin/env bash
# ALTER and NPO (the strongest baseline on the toy) over three seeds: each seed draws new toy people and trains
# new target and retain models. Usage: bash experiments/toy_seeds.sh   (about 10 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
for seed in 0 1 2; do
  for method in alter npo; do
    echo "== seed $seed $method"
    python train.py --forget toy_forget10 --model tiny --seed "$seed" --method "$method" \
      --out "out/toy_seeds/s$seed/$method" --overwrite | tail -n 2
  done
done
python - <<'PY' > results/toy_seeds.md
import json
print("| seed | target FQ / MU | ALTER FQ / MU (MU ÷ target) | NPO FQ / MU (MU ÷ target) "
      "| forget MC acc: target → ALTER / NPO (retain model) |")
print("|---|---|---|---|---|")
for seed in (0, 1, 2):
    m = {k: json.load(open(f"out/toy_seeds/s{seed}/{k}/metrics.json")) for k in ("alter", "npo")}
    t, r = m["alter"]["target"], m["alter"]["retain"]
    fq_mu = lambda u: (f"{u['forget_quality']:.3f} / {u['model_utility']:.3f} "
                       f"({u['model_utility'] / t['model_utility']:.2f})")
    print(f"| {seed} | {t['forget_quality']:.3f} / {t['model_utility']:.3f} | {fq_mu(m['alter']['unlearned'])} | "
          f"{fq_mu(m['npo']['unlearned'])} | {t['mc_forget_acc']:.3f} → {m['alter']['unlearned']['mc_forget_acc']:.3f}"
          f" / {m['npo']['unlearned']['mc_forget_acc']:.3f} ({r['mc_forget_acc']:.3f}) |")
PY
cat results/toy_seeds.md
