"""Equal tuning on the toy benchmark: every method gets the same small grid (3 learning rates x 2 epoch counts)
on a validation world, and one rule, fixed in advance, picks its setting:

    among the settings whose model utility is >= 0.9 x the target's, the one with the best forget quality;
    ties (the KS p-value of 24 truth ratios moves in coarse steps) go to the forget probability nearest the
    retain model's (|log ratio|), then to utility; when none keeps 0.9 x, the one with the best utility.

The validation world is the toy benchmark drawn with seed VALIDATION_SEED: other people, other target and retain
models than the seeds whose results are reported (experiments/toy_seeds.py, seeds 0-4), so no reported number is
selected on itself. Writes results/toy_tune/grid.md (every setting) and results/toy_tune/selected.json.
Resumable (experiments/runs.py).
    python experiments/toy_tune.py [--threads N] [METHOD ...]   (one core: about a minute a setting)
"""
import argparse
import json
import math
import os

from runs import ROOT, train
from metrics import write_json

VALIDATION_SEED = 100
EPOCHS = (10, 20)
# each method's learning-rate flag and its three values: the toy default (plan.DEFAULTS) and 3x either side
GRID = {"alter": ("--lr-b", (3e-4, 1e-3, 3e-3)), "npo": ("--lr", (3e-5, 1e-4, 3e-4)),
        "gd": ("--lr", (3e-5, 1e-4, 3e-4)), "rmu": ("--rmu-lr", (1e-2, 3e-2, 1e-1)),
        "simnpo": ("--lr", (3e-5, 1e-4, 3e-4)), "asymlora": ("--lr-b", (3e-4, 1e-3, 3e-3)),
        "lora": ("--lr-b", (3e-4, 1e-3, 3e-3)), "ga": ("--lr", (3e-5, 1e-4, 3e-4))}
UTILITY_FLOOR = 0.9


def settings(method):
    flag, lrs = GRID[method]
    return [(f"lr{lr:g}_ep{ep}", ["--method", method, flag, f"{lr:g}", "--epochs", str(ep)])
            for lr in lrs for ep in EPOCHS]


def select(results, target_mu, retain_prob):
    """The rule above: results {name: unlearned row} -> the chosen name."""
    ok = [n for n, r in results.items() if r["model_utility"] >= UTILITY_FLOOR * target_mu]
    if ok:
        gap = lambda r: abs(math.log(max(r["forget_Q_A_Prob"], 1e-30) / retain_prob))
        return max(ok, key=lambda n: (results[n]["forget_quality"], -gap(results[n]), results[n]["model_utility"]))
    return max(results, key=lambda n: results[n]["model_utility"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("methods", nargs="*", default=list(GRID))
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    res = os.path.join(ROOT, "results", "toy_tune")
    os.makedirs(res, exist_ok=True)
    path = os.path.join(res, "selected.json")
    selected = json.load(open(path)) if os.path.exists(path) else {}
    for method in args.methods:
        results = {}
        for name, flags in settings(method):
            m = train(os.path.join(ROOT, "out", "toy_tune", method, name), flags, VALIDATION_SEED, args.threads,
                      record=os.path.join(res, f"{method}-{name}.json"))
            results[name], target, retain = m["unlearned"], m["target"], m["retain"]
        best = select(results, target["model_utility"], retain["forget_Q_A_Prob"])
        selected[method] = dict(setting=best, flags=dict(settings(method))[best],
                                forget_quality=results[best]["forget_quality"],
                                model_utility=results[best]["model_utility"],
                                target_model_utility=target["model_utility"])
        write_json(path, selected)
        print(f"{method}: {best} (forget quality {results[best]['forget_quality']:.3g}, "
              f"model utility {results[best]['model_utility']:.3f})", flush=True)
    table(res)


def table(res):
    """Every finished setting of every method, the selected ones in bold."""
    selected = json.load(open(os.path.join(res, "selected.json")))
    lines = ["| method | setting | forget quality ↑ | model utility ↑ (÷ target) | forget prob ↓ | retain ROUGE ↑ |",
             "|---|---|---|---|---|---|"]
    for method in GRID:
        for name, _ in settings(method):
            f = os.path.join(res, f"{method}-{name}.json")
            if not os.path.exists(f):
                continue
            m = json.load(open(f))
            u, t = m["unlearned"], m["target"]
            b = "**" if selected.get(method, {}).get("setting") == name else ""
            lines.append(f"| {method} | {b}{name}{b} | {u['forget_quality']:.3g} | {u['model_utility']:.3f} "
                         f"({u['model_utility'] / t['model_utility']:.2f}) | {u['forget_Q_A_Prob']:.3g} | "
                         f"{u['retain_Q_A_ROUGE']:.3f} |")
    open(os.path.join(res, "grid.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
