"""ALTER's isolation of the shared A, measured on a finished toy run: how much of A's Phase II gradient comes
from terms other than the high-entropy ones when A is only detached at low-entropy positions ("position"),
and what the exact form ("exact": a separate gradient of the high-entropy terms) costs per step.

    bash experiments/toy_table.sh && python experiments/a_isolation.py out/toy_table/alter

It rebuilds the run's Phase II batches (same data, entropy profile, sub-domains, batch order) on the run's
trained adapter, and reports mean gradient norms of each loss term on the lora_A tensors and the median time
of a Phase II forward + backward in each mode.
"""
import argparse
import json
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from alter import a_loss, adapter_file, adapter_header, adapter_params, backward, cluster, load_adapter  # noqa: E402
from data.forget_sets import RETAIN_OF  # noqa: E402
from methods import method_loss  # noqa: E402
from data.batching import batch_indices, collate, encode_qa  # noqa: E402
from data.benchmarks import load_split  # noqa: E402
from entropy import pad_profile, profile  # noqa: E402
from model import GPT  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

run_dir = sys.argv[1] if len(sys.argv) > 1 else "out/toy_table/alter"
cfg = json.load(open(os.path.join(run_dir, "config.json")))
run = adapter_header(run_dir)
model = GPT.from_pretrained(run["base_model"], verbose=False).eval()
tok = Tokenizer.from_pretrained(run["base_model"])
pct = cfg["forget"][-2:]
bench = cfg["forget"].split("_")[0]
forget_ex = encode_qa(tok, load_split(f"{bench}_forget{pct}", cfg["data_dir"], cfg["seed"]))
retain_ex = encode_qa(tok, load_split(f"{bench}_retain{RETAIN_OF[pct]}", cfg["data_dir"], cfg["seed"])[:cfg["limit"]])
prof = profile(model, forget_ex + retain_ex, run["q"], tok.pad_id, cache_dir="out/cache")
f_expert = cluster(model, forget_ex, cfg["n_experts"], tok.pad_id, cfg["seed"])
load_adapter(model, adapter_file(run_dir))
for _, p in adapter_params(model):
    p.requires_grad_(True)
A = [p for n, p in adapter_params(model) if "lora_A" in n]
w = argparse.Namespace(**cfg)  # the run's flags: beta, gamma, lam, mu


def batches(epoch):
    """The run's Phase II batches of one epoch: forget examples in the run's order plus random retain ones."""
    rng = random.Random(cfg["seed"] * 7919 + epoch)
    for fidx in batch_indices(len(forget_ex), cfg["batch_size"], cfg["seed"], epoch):
        ridx = [rng.randrange(len(retain_ex)) for _ in fidx]
        items = [prof[i] for i in fidx] + [prof[len(forget_ex) + i] for i in ridx]
        b = collate([forget_ex[i] for i in fidx] + [retain_ex[i] for i in ridx], tok.pad_id)
        b["expert"] = torch.tensor([f_expert[i] for i in fidx] + [0] * len(ridx))
        b["high"] = pad_profile(items, "H", b["x"].size(1)) > run["theta"]
        b["top_ids"] = torch.cat([it["top_ids"] for it in items])
        b["top_logp"] = torch.cat([it["top_logp"] for it in items])
        b["gate"] = cfg["train_gate"]
        yield b


# 1. where A's gradient comes from under the per-position detach
norm = lambda t: torch.cat([g.flatten() for g in torch.autograd.grad(t, A, retain_graph=True, allow_unused=True)
                            if g is not None]).norm().item() if t.requires_grad else 0.0
terms = {}
for b in list(batches(2)) + list(batches(3)):
    _, parts = method_loss("alter", 2, model, {**b, "a_grad": "position"}, w)
    high = a_loss(parts, 2, w)
    low = w.beta * parts["ihl"] + w.gamma * (parts["retain"] - parts["retain_high"]) + w.mu * parts["route"]
    for k, t in (("all terms", high + low), ("high-entropy terms", high), ("other terms", low),
                 ("IHL (beta)", w.beta * parts["ihl"]), ("retain NLL, low-entropy share (gamma)",
                                                        w.gamma * (parts["retain"] - parts["retain_high"])),
                 ("routing CE (mu)", w.mu * parts["route"]), ("structural KL (lambda)", w.lam * parts["struct"])):
        terms.setdefault(k, []).append(norm(t))
print(f"{run_dir}: {len(terms['all terms'])} Phase II batches, theta {run['theta']:.3f}, trained adapter")
print("gradient norm on lora_A under --a-grad position (mean over batches):")
for k, v in terms.items():
    print(f"  {k:<40} {statistics.mean(v):.3e}")
share = statistics.mean(o / a for o, a in zip(terms["other terms"], terms["all terms"]) if a > 0)
print(f"share of A's gradient from terms other than the high-entropy ones: {share:.1%} (mean of |g_other| / |g_all|)")

# 2. the cost of the exact form: a Phase II forward + backward, median over the batches, after a warm-up
times = {}
for a_grad in ("position", "exact", "position", "exact"):
    ts = []
    for b in batches(2):
        b["a_grad"] = a_grad
        for p in model.parameters():
            p.grad = None
        t0 = time.perf_counter()
        loss, parts = method_loss("alter", 2, model, b, w)
        backward(model, loss, a_loss(parts, 2, w) if a_grad == "exact" else None)
        ts.append(time.perf_counter() - t0)
    times[a_grad] = statistics.median(ts)  # the second pass of each mode counts (the first warms up)
print(f"Phase II step (forward + backward): position {times['position'] * 1e3:.0f} ms, exact "
      f"{times['exact'] * 1e3:.0f} ms, ratio {times['exact'] / times['position']:.2f} "
      f"({torch.get_num_threads()} threads)")
