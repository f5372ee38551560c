"""Collect the metrics.json of several runs into one markdown table:
    python experiments/collect.py RUNS_DIR [COL ...]
(COL: metric keys to show, default: every known one the runs have; a run's row is named by its folder)"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from methods import METHODS  # noqa: E402

COLS = [("forget_quality", "forget quality ↑"), ("model_utility", "model utility ↑"),
        ("forget_truth_ratio", "forget truth ratio"), ("forget_Q_A_Prob", "forget prob ↓"),
        ("forget_Q_A_ROUGE", "forget ROUGE ↓"),
        ("retain_Q_A_ROUGE", "retain ROUGE ↑"), ("mc_forget_acc", "forget MC acc ↓"),
        ("mc_retain_acc", "retain MC acc ↑"), ("general_acc", "general acc ↑"),
        ("forget_verbmem_ROUGE", "VerbMem ↓"),
        ("privleak", "PrivLeak (0 best)"), ("muse_privleak", "PrivLeak, texts (0 best)"),
        ("forget_knowmem_ROUGE", "KnowMem forget ↓"),
        ("retain_knowmem_ROUGE", "KnowMem retain ↑"), ("wmdp_bio_acc", "WMDP bio acc ↓"),
        ("wmdp_cyber_acc", "WMDP cyber acc ↓"), ("mmlu_acc", "MMLU acc ↑"),
        ("train_seconds", "unlearning time (s)"), ("trainable_params", "trainable params")]


def fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.2e}" if 0 < abs(v) < 1e-2 else f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


root = sys.argv[1]
runs = sorted(d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "metrics.json")))
rows = {}
for d in runs:
    m = json.load(open(os.path.join(root, d, "metrics.json")))
    rows.setdefault("target", m["target"])
    if "retain" in m:
        rows.setdefault("retain", m["retain"])
    rows[d] = m["unlearned"]
# the references, then every method in METHODS' order, then the rest (ablations such as alter-no-phase1) by name
known = ["target", "retain"] + list(METHODS)
order = [r for r in known if r in rows] + sorted(r for r in rows if r not in known)
cols = [(k, h) for k, h in COLS if any(k in rows[r] for r in order) and (len(sys.argv) < 3 or k in sys.argv[2:])]
print("| model | " + " | ".join(h for _, h in cols) + " |")
print("|---" * (len(cols) + 1) + "|")
for r in order:
    print(f"| {r} | " + " | ".join(fmt(rows[r].get(k)) for k, _ in cols) + " |")
