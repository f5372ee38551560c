"""One markdown table of unlearning and routing numbers from metrics.json files:
    python experiments/routing_table.py DIR      (DIR/<group>/<run>.json, or DIR/<run>.json)
A file is train.py's metrics.json (its unlearned row; the target and retain rows are shown once per group) or
evaluate.py's (one row). Routing columns come from its "routing" block (routing.gate_report)."""
import json
import os
import sys

COLS = [("forget_quality", "forget quality ↑"), ("model_utility", "model utility ↑"),
        ("forget_Q_A_Prob", "forget prob ↓"), ("forget_Q_A_ROUGE", "forget ROUGE ↓"),
        ("retain_Q_A_ROUGE", "retain ROUGE ↑")]
ROUTING = [("forget", "sub_domain_acc_low", "forget rows: right expert (low-entropy)"),
           ("forget_paraphrased", "sub_domain_acc_low", "paraphrased: right expert"),
           ("retain", "low_to_forget", "retain: to a forget expert ↓"),
           ("forget", "high", "forget: high-entropy share")]


def fmt(v):
    if v is None:
        return "–"
    return f"{v:.2e}" if 0 < abs(v) < 1e-2 else f"{v:.3f}"


def row(name, m):
    r = m.get("routing", {})
    return f"| {name} | " + " | ".join(fmt(m.get(k)) for k, _ in COLS) + " | " + \
        " | ".join(fmt(r.get(s, {}).get(k)) for s, k, _ in ROUTING) + " |"


root = sys.argv[1]
groups = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))) or [""]
print("| run | " + " | ".join(h for _, h in COLS) + " | " + " | ".join(h for _, _, h in ROUTING) + " |")
print("|---" * (1 + len(COLS) + len(ROUTING)) + "|")
for g in groups:
    files = sorted(f for f in os.listdir(os.path.join(root, g)) if f.endswith(".json"))
    refs = {}
    for f in files:
        m = json.load(open(os.path.join(root, g, f)))
        refs.update({k: m[k] for k in ("target", "retain") if k in m and k not in refs})
    prefix = f"{g}: " if g else ""
    for k, m in refs.items():
        print(row(prefix + k, m))
    for f in files:
        m = json.load(open(os.path.join(root, g, f)))
        print(row(prefix + f[:-5], m.get("unlearned", m)))
