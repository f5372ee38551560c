"""The README's pictures (matplotlib: pip install -r requirements-plots.txt), written to results/plots/:
  fq_vs_mu.png   forget quality (log scale) against model utility: every method (not the ablations) and seed of the toy
                 (results/toy_seeds, experiments/toy_seeds.py) and every method and forget pair of the real model
                 (results/smollm2_compare, experiments/smollm2_compare.sh), the target and retain models marked;
  entropy.png    S_q of the target model's next-token distribution at the answer tokens of the forget and the
                 retain questions, with the threshold theta (the paper's Observation II): the toy (seed 0) and
                 SmolLM2 (forget01), from the ALTER runs of those experiments (their target models, out/; without
                 them the committed picture is kept);
  losses.png     the loss parts of the toy seed-0 ALTER run, step by step, Phase I then Phase II (its log, kept in
                 results/plots/losses.txt).
    python experiments/plots.py
"""
import json
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")))
try:
    import matplotlib
except ImportError:
    sys.exit("experiments/plots.py needs matplotlib: pip install -r requirements-plots.txt")

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from metrics import write_json  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = os.path.join(ROOT, "results", "plots")
ENTROPY_RUNS = {"toy, seed 0": "out/toy_seeds/s0/alter", "SmolLM2, forget01": "out/smollm2_compare/p9/alter"}
LOSS_LOG = "out/toy_seeds/s0/alter.log"


def points(root):
    """{group (seed or pair): {run: unlearned row}} of a results folder of <group>/<run>.json files, with the
    target and retain rows of each group."""
    out = {}
    for g in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if not os.path.isdir(os.path.join(root, g)):
            continue
        for f in sorted(f for f in os.listdir(os.path.join(root, g)) if f.endswith(".json") and "relearn" not in f):
            m = json.load(open(os.path.join(root, g, f)))
            rows = out.setdefault(g, {})
            rows[f.removesuffix(".json")] = m["unlearned"]
            rows.update(target=m["target"], retain=m["retain"])
    return out


def fq_vs_mu():
    panels = [("toy: 5 seeds", points(os.path.join(ROOT, "results", "toy_seeds"))),
              ("SmolLM2-135M: forget pairs", points(os.path.join(ROOT, "results", "smollm2_compare")))]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, (title, groups) in zip(axes, panels):
        runs = sorted({r for g in groups.values() for r in g if "-" not in r} - {"target", "retain"},
                      key=lambda r: (r != "alter", r))  # the methods (the ablations are in the tables)
        colors = dict(zip(runs, plt.cm.tab20(np.linspace(0, 1, max(len(runs), 2)))))
        for r in ["target", "retain"] + runs:
            xs = [max(g[r]["forget_quality"], 1e-12) for g in groups.values() if r in g]
            ys = [g[r]["model_utility"] for g in groups.values() if r in g]
            style = dict(target=dict(marker="X", s=90, c="black"), retain=dict(marker="*", s=150, c="gold",
                                                                              edgecolors="black"))
            ax.scatter(xs, ys, label=r, alpha=0.85, **style.get(r, dict(marker="o", s=36, color=colors.get(r))))
            if len(groups) <= 3 and r != "retain":  # few groups (forget pairs): name each point
                for g, x, y in zip([g for g in groups if r in groups[g]], xs, ys):
                    ax.annotate(g, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("forget quality (KS p-value, log scale) →")
        ax.set_ylabel("model utility →")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "fq_vs_mu.png"), dpi=110)


def answer_entropies(run):
    """S_q at the answer tokens of the forget and retain evaluation questions, under the run's target model;
    and the run's (q, theta used)."""
    from alter import adapter_header
    from data.batching import encode_qa
    from data.benchmarks import load_split
    from entropy import profile
    from evaluate import forget_eval_rows
    from model import GPT
    from tokenizer import Tokenizer
    run = os.path.join(ROOT, run)
    cfg = json.load(open(os.path.join(run, "config.json")))
    head = adapter_header(run)
    path = head["base_model"]  # the target: ALTER's adapter sits on it
    model, tok = GPT.from_pretrained(path, verbose=False).eval(), Tokenizer.from_pretrained(path)
    tok.system = cfg["system_prompt"]
    bench, pct = cfg["forget"].split("_")[0], cfg["forget"][-2:]
    sets = {"forget": forget_eval_rows(bench, pct, cfg["data_dir"], cfg["seed"], cfg.get("forget_pair")),
            "retain": load_split(f"{bench}_retain_perturbed", cfg["data_dir"], cfg["seed"])}
    out = {}
    for name, rows in sets.items():
        ex = encode_qa(tok, rows[:cfg["eval_limit"]])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=head["dtype"] == "bfloat16"):
            prof = profile(model, ex, head["q"], tok.pad_id)
        out[name] = torch.cat([p["H"][n - 1:] for p, (_, n) in zip(prof, ex)]).numpy()
    return out, head["q"], head["theta"]


def entropy():
    """Needs both ALTER runs in out/; without them the committed picture and its numbers are kept."""
    def present(run):  # the run and the target model its adapter sits on (out/cache)
        run = os.path.join(ROOT, run)
        if not all(os.path.exists(os.path.join(run, f)) for f in ("metrics.json", "config.json",
                                                                  "adapter.safetensors")):
            return False
        from alter import adapter_header
        return os.path.exists(os.path.join(ROOT, adapter_header(run)["base_model"]))
    missing = [run for run in ENTROPY_RUNS.values() if not present(run)]
    if missing:
        print(f"entropy.png kept as it is: {', '.join(missing)} (or its target model) not found")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    stats = {}
    for ax, (title, run) in zip(axes, ENTROPY_RUNS.items()):
        H, q, theta = answer_entropies(run)
        bins = np.linspace(0, max(h.max() for h in H.values()), 40)
        for name, h in H.items():
            ax.hist(h, bins=bins, alpha=0.55, density=True, label=f"{name} answers ({len(h)} tokens)")
        ax.axvline(theta, color="red", ls="--", label=f"theta used {theta:.3g}")
        ax.axvline(1.2, color="gray", ls=":", label="the paper's theta 1.2")
        ax.set_yscale("log")
        ax.set_xlabel(f"S_{q:g} of the target's next-token distribution")
        ax.set_ylabel("density (log)")
        ax.set_title(title)
        ax.legend(fontsize=8)
        stats[title] = {n: dict(tokens=len(h), above_theta=float((h > theta).mean()), median=float(np.median(h)))
                        for n, h in H.items()} | {"theta": theta, "q": q}
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "entropy.png"), dpi=110)
    write_json(os.path.join(OUT, "entropy.json"), stats)
    return True


def losses():
    """From the run's log in out/, whose step lines are kept in results/plots/losses.txt for when out/ is gone."""
    kept = os.path.join(OUT, "losses.txt")
    if os.path.exists(os.path.join(ROOT, LOSS_LOG)):
        steps = [ln for ln in open(os.path.join(ROOT, LOSS_LOG)) if re.match(r"phase \d epoch", ln)]
        open(kept, "w").writelines(steps)
    line = re.compile(r"phase (\d) epoch \d+ step (\d+) \| loss [-\d.]+ \((.*?)\) \|")
    curves = {}
    for m in map(line.search, open(kept)):
        if m:
            for part in m.group(3).split(", "):
                k, v = part.rsplit(" ", 1)
                curves.setdefault(f"phase {m.group(1)}: {k}", []).append((int(m.group(2)), float(v)))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, xy in curves.items():
        ax.plot(*zip(*xy), label=k, ls="-" if k.startswith("phase 2") else "--")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss part")
    ax.set_title(f"ALTER's loss parts, toy seed 0 ({LOSS_LOG})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "losses.png"), dpi=110)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    fq_vs_mu()
    made = entropy()
    losses()
    print(f"wrote {OUT}/fq_vs_mu.png, " + ("entropy.png (entropy.json), " if made else "") + "losses.png")
