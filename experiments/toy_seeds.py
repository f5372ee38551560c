"""Every method and every ALTER ablation over five seeds of the toy benchmark, at the settings that
experiments/toy_tune.py selected on its validation world. Each seed draws new toy people and trains new target
and retain models. Writes results/toy_seeds/s<seed>/<run>.json as each run ends (resumable) and
results/toy_seeds/table.md (experiments/table.py: mean ± standard deviation over the seeds, and ALTER above /
equal to / below each run seed by seed).
    python experiments/toy_seeds.py [--threads N] [--seeds 0 1 2 3 4] [RUN ...]
(on one core: about 4 minutes for a seed's target and retain models, then about a minute a run)
RUN: a method of toy_tune.py's selection or an ablation below (default: all, the main methods first).
"""
import argparse
import json
import os

from runs import ROOT, gate, recorded, train
from table import table

SEEDS = (0, 1, 2, 3, 4)
MAIN = ("alter", "npo", "gd", "rmu")  # ALTER and the baselines of the relearning attack, first
# ALTER's ablations: its selected setting plus these flags; *-gate: its adapter under another gate
ABLATIONS = {"alter-no-phase1": ["--no-phase1"], "alter-no-struct": ["--lam", "0"], "alter-shannon": ["--q", "1"],
             "alter-soft-gates": ["--train-gate", "soft"], "alter-a-position": ["--a-grad", "position"],
             "alter-token-router": ["--router-input", "token", "--lr-router", "1e-3"],
             "alter-token-router-fast": ["--router-input", "token"], "alter-router-slow": ["--lr-router", "1e-3"],
             "alter-router-gate": "router", "alter-oracle-gate": "oracle"}


def run(name, seed, selected, threads):
    """One run's metrics (train.py, or evaluate.py for a gate ablation), recorded under results/toy_seeds."""
    out = os.path.join(ROOT, "out", "toy_seeds", f"s{seed}")
    record = os.path.join(ROOT, "results", "toy_seeds", f"s{seed}", f"{name}.json")
    if name in selected:
        return train(os.path.join(out, name), selected[name]["flags"], seed, threads, record)
    extra = ABLATIONS[name]
    if isinstance(extra, str):  # the ALTER run's adapter under another gate
        alter = selected["alter"]["flags"] + ["--seed", str(seed)]
        if not recorded(record, alter + ["--gate", extra]):  # the gate needs the adapter itself, in out/
            train(os.path.join(out, "alter"), selected["alter"]["flags"], seed, threads)
        return gate(os.path.join(out, "alter"), extra, alter, threads, record)
    return train(os.path.join(out, name), selected["alter"]["flags"] + extra, seed, threads, record)


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
            run(name, seed, selected, args.threads)
    print(table(os.path.join(ROOT, "results", "toy_seeds"), first=MAIN, last=ABLATIONS))


if __name__ == "__main__":
    main()
