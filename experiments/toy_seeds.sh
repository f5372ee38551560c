#!/usr/bin/env bash
# ALTER, ALTER with the token-only router (the router before the prefix input) and NPO (the strongest baseline on
# the toy) over three seeds: each seed draws new toy people and trains new target and retain models.
# Usage: bash experiments/toy_seeds.sh   (about 15 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
for seed in 0 1 2; do
  for spec in "alter" "alter-token-router --router-input token --lr-router 1e-3" "npo --method npo"; do
    set -- $spec
    name=$1; shift
    echo "== seed $seed $name"
    python train.py --forget toy_forget10 --model tiny --seed "$seed" --out "out/toy_seeds/s$seed/$name" --overwrite \
      "$@" | tail -n 2
  done
done
python - <<'PY' > results/toy_seeds.md
import json
runs = ("alter", "alter-token-router", "npo")
print("| seed | target FQ / MU | ALTER FQ / MU (MU ÷ target) | ALTER, token router | NPO "
      "| forget MC acc: target → ALTER / token router / NPO (retain model) "
      "| forget prob: ALTER / token router / NPO (retain model) |")
print("|---|---|---|---|---|---|---|")
for seed in (0, 1, 2):
    m = {k: json.load(open(f"out/toy_seeds/s{seed}/{k}/metrics.json")) for k in runs}
    t, r = m["alter"]["target"], m["alter"]["retain"]
    fq_mu = lambda u: (f"{u['forget_quality']:.3f} / {u['model_utility']:.3f} "
                       f"({u['model_utility'] / t['model_utility']:.2f})")
    mc = " / ".join(f"{m[k]['unlearned']['mc_forget_acc']:.3f}" for k in runs)
    print(f"| {seed} | {t['forget_quality']:.3f} / {t['model_utility']:.3f} | "
          + " | ".join(fq_mu(m[k]["unlearned"]) for k in runs)
          + f" | {t['mc_forget_acc']:.3f} → {mc} ({r['mc_forget_acc']:.3f}) | "
          + " / ".join(f"{m[k]['unlearned']['forget_Q_A_Prob']:.3f}" for k in runs)
          + f" ({r['forget_Q_A_Prob']:.3f}) |")
PY
cat results/toy_seeds.md
