"""One table of runs repeated over seeds (or forget pairs): results/<experiment>/<group>/<run>.json files (train.py's
metrics.json), one row per run with the mean ± sample standard deviation over the groups, and ALTER against the row,
group by group: on how many groups ALTER's forget quality (and its model utility) is above / equal to / below the
row's (forget quality moves in coarse steps: ties are common). --per-group adds every group's row.
    python experiments/table.py results/toy_seeds [--per-group]     (writes <folder>/table.md)
"""
import json
import os
import sys

import numpy as np

KEYS = (("forget_quality", "forget quality ↑"), ("model_utility", "model utility ↑"),
        ("forget_Q_A_Prob", "forget prob ↓"), ("forget_Q_A_ROUGE", "forget ROUGE ↓"),
        ("mc_forget_acc", "forget MC acc ↓"), ("retain_Q_A_ROUGE", "retain ROUGE ↑"))


def load_all(root):
    """{run: {group: unlearned row}} of every <group>/<run>.json under root, plus "target" and "retain"."""
    runs = {}
    for g in sorted(os.listdir(root)):
        if not os.path.isdir(os.path.join(root, g)):
            continue
        for f in sorted(f for f in os.listdir(os.path.join(root, g)) if f.endswith(".json") and "relearn" not in f):
            m = json.load(open(os.path.join(root, g, f)))
            runs.setdefault(f.removesuffix(".json"), {})[g] = m["unlearned"]
            for r in ("target", "retain"):
                runs.setdefault(r, {})[g] = m[r]
    return runs


def versus(a, b):
    """'above/equal/below' counts of a against b, pair by pair (a missing value: not counted)."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    return "/".join(str(n) for n in (sum(x > y for x, y in pairs), sum(x == y for x, y in pairs),
                                     sum(x < y for x, y in pairs)))


def ms(values):
    """Mean and sample standard deviation (0 for one value, and for equal values: not a rounding residue)."""
    v = np.array(values, dtype=float)
    return v.mean(), v.std(ddof=1) if len(v) > 1 and np.ptp(v) > 0 else 0.0


def table(root, first=("alter",), last=(), per_group=False):
    """The markdown table (also written to root/table.md): target, retain, `first`, the other runs, `last`."""
    runs = load_all(root)
    refs = ["target", "retain"]
    order = refs + [r for r in first if r in runs] + \
        sorted(r for r in runs if r not in first and r not in last and r not in refs) + [r for r in last if r in runs]
    keys = [(k, h) for k, h in KEYS if all(k in row for r in order for row in runs[r].values())]
    alter = runs.get("alter", {})
    lines = ["| run | n | " + " | ".join(h for _, h in keys) + " | MU ÷ target | ALTER above/equal/below: FQ; MU |",
             "|---" * (len(keys) + 4) + "|"]
    for r in order:
        groups = sorted(runs[r])
        both = [g for g in groups if g in alter]
        wins = "–" if r in ["alter"] + refs or not both else \
            "; ".join(versus([alter[g][k] for g in both], [runs[r][g][k] for g in both])
                      for k in ("forget_quality", "model_utility"))
        lines_of = [(f"{g}: {r}", [g]) for g in groups] if per_group else []
        if not per_group or len(groups) > 1:
            lines_of.append((r, groups))  # the mean over groups
        for name, gs in lines_of:
            cell = lambda k: "{:.3g} ± {:.2g}".format(*ms([runs[r][g][k] for g in gs])) if len(gs) > 1 else \
                f"{runs[r][gs[0]][k]:.3g}"
            ratio = ms([runs[r][g]["model_utility"] / runs["target"][g]["model_utility"] for g in gs])
            lines.append(f"| {'**' + name + '**' if per_group and len(gs) > 1 else name} | {len(gs)} | " +
                         " | ".join(cell(k) for k, _ in keys) + f" | {ratio[0]:.2f}" +
                         (f" ± {ratio[1]:.2f}" if len(gs) > 1 else "") + f" | {wins if gs is groups else ''} |")
    text = "\n".join(lines) + "\n"
    open(os.path.join(root, "table.md"), "w").write(text)
    return text


if __name__ == "__main__":
    print(table(sys.argv[1], per_group="--per-group" in sys.argv))
