"""Every method and every ALTER ablation over five seeds of the toy benchmark, at the settings that
experiments/toy_tune.py selected on its validation world. Each seed draws new toy people and trains new target
and retain models. Writes results/toy_seeds/s<seed>/<run>.json as each run ends (resumable) and
results/toy_seeds/table.md: mean ± standard deviation over the seeds, and paired wins (on how many seeds
ALTER's forget quality, and its model utility, beat the row's).
    python experiments/toy_seeds.py [--threads N] [--seeds 0 1 2 3 4] [RUN ...]   (about 2 minutes a run, 1 core)
RUN: a method of toy_tune.py's selection or an ablation below (default: all, the main methods first).
"""
import argparse
import json
import os

import numpy as np

from runs import ROOT, gate, train

SEEDS = (0, 1, 2, 3, 4)
MAIN = ("alter", "npo", "gd", "rmu")  # ALTER and the baselines of the relearning attack, first
# ALTER's ablations: its selected setting plus these flags; *-gate: its adapter under another gate
ABLATIONS = {"alter-no-phase1": ["--no-phase1"], "alter-no-struct": ["--lam", "0"], "alter-shannon": ["--q", "1"],
             "alter-soft-gates": ["--train-gate", "soft"], "alter-a-position": ["--a-grad", "position"],
             "alter-token-router": ["--router-input", "token", "--lr-router", "1e-3"],
             "alter-router-gate": "router", "alter-oracle-gate": "oracle"}
KEYS = (("forget_quality", "forget quality ↑"), ("model_utility", "model utility ↑"),
        ("forget_Q_A_Prob", "forget prob ↓"), ("forget_Q_A_ROUGE", "forget ROUGE ↓"),
        ("mc_forget_acc", "forget MC acc ↓"), ("retain_Q_A_ROUGE", "retain ROUGE ↑"))


def run(name, seed, selected, threads):
    """One run's metrics (train.py, or evaluate.py for a gate ablation)."""
    out = os.path.join(ROOT, "out", "toy_seeds", f"s{seed}")
    if name in selected:
        return train(os.path.join(out, name), selected[name]["flags"], seed, threads)
    extra = ABLATIONS[name]
    if isinstance(extra, str):  # the ALTER run's adapter under another gate
        run("alter", seed, selected, threads)
        return gate(os.path.join(out, "alter"), extra, threads)
    return train(os.path.join(out, name), selected["alter"]["flags"] + extra, seed, threads)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    selected = json.load(open(os.path.join(ROOT, "results", "toy_tune", "selected.json")))
    names = args.runs or [m for m in MAIN if m in selected] + [m for m in selected if m not in MAIN] + list(ABLATIONS)
    for name in names:
        if name not in selected and name not in ABLATIONS:
            raise SystemExit(f"unknown run {name!r}: not selected by toy_tune.py nor an ablation")
        for seed in args.seeds:
            m = run(name, seed, selected, args.threads)
            res = os.path.join(ROOT, "results", "toy_seeds", f"s{seed}")
            os.makedirs(res, exist_ok=True)
            json.dump(m, open(os.path.join(res, f"{name}.json"), "w"), indent=1)
    print(table())


def load_all():
    """{run: {seed: metrics}} of every finished run under results/toy_seeds, and the target/retain rows by seed."""
    root = os.path.join(ROOT, "results", "toy_seeds")
    runs, refs = {}, {}
    for d in sorted(os.listdir(root)):
        if not d.startswith("s") or not os.path.isdir(os.path.join(root, d)):
            continue
        seed = int(d[1:])
        for f in sorted(os.listdir(os.path.join(root, d))):
            m = json.load(open(os.path.join(root, d, f)))
            runs.setdefault(f.removesuffix(".json"), {})[seed] = m["unlearned"]
            refs[seed] = {"target": m["target"], "retain": m["retain"]}
    for r in ("target", "retain"):
        runs[r] = {s: v[r] for s, v in refs.items()}
    return runs


def table():
    runs = load_all()
    order = ["target", "retain"] + [r for r in MAIN if r in runs] + \
        sorted(r for r in runs if r not in MAIN and r not in ABLATIONS and r not in ("target", "retain")) + \
        [r for r in ABLATIONS if r in runs]
    alter = runs.get("alter", {})
    lines = ["| run | seeds | " + " | ".join(h for _, h in KEYS) + " | MU ÷ target | ALTER wins: FQ / MU |",
             "|---" * (len(KEYS) + 4) + "|"]
    for r in order:
        seeds = sorted(runs[r])
        cell = lambda k: "{:.3g} ± {:.2g}".format(*ms([runs[r][s][k] for s in seeds]))
        ratio = ms([runs[r][s]["model_utility"] / runs["target"][s]["model_utility"] for s in seeds])
        both = [s for s in seeds if s in alter]
        wins = "–" if r in ("alter", "target", "retain") or not both else \
            f"{sum(alter[s]['forget_quality'] > runs[r][s]['forget_quality'] for s in both)}/{len(both)} / " \
            f"{sum(alter[s]['model_utility'] > runs[r][s]['model_utility'] for s in both)}/{len(both)}"
        lines.append(f"| {r} | {len(seeds)} | " + " | ".join(cell(k) for k, _ in KEYS) +
                     f" | {ratio[0]:.2f} ± {ratio[1]:.2f} | {wins} |")
    text = "\n".join(lines) + "\n"
    open(os.path.join(ROOT, "results", "toy_seeds", "table.md"), "w").write(text)
    return text


def ms(values):
    """Mean and sample standard deviation (0 for one value)."""
    v = np.array(values, dtype=float)
    return v.mean(), v.std(ddof=1) if len(v) > 1 else 0.0


if __name__ == "__main__":
    main()
