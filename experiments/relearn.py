"""The relearning attack (Hu et al., ICLR 2025; Deeb & Roger 2024): does unlearned knowledge come back when the
model is fine-tuned on a little of it? Every parameter of the model as it is deployed (for ALTER: the base
weights, the adapters and the routers, run under the run's gate) is fine-tuned for --steps full-batch AdamW
steps on the answers of half of the forget questions (a seeded random half of each person's or author's), at a
tenth of the learning rate that made the target (the run's --ft-lr: the attack runs at 3e-4 on the toy, 1e-5 on
SmolLM2); then it is scored on the other half, which it never saw during the attack. That rate is the largest
that leaves the target's held-out half where it was on the toy's validation world (toy_relearn.sh's
calibration, results/toy_relearn/calibration.md): a mild attack.
The target and the retain model go through the same attack: the target is where the facts start, the retain
model (it never knew them) is what fine-tuning on half of a person's facts teaches about the other half.

    python experiments/relearn.py RUN [RUN ...] --out results/x.json [--steps 10] [--lr LR]

RUN: a train.py run folder (question-answer forgetting): its unlearned model (the adapter under the run's gate,
or the saved full model). The runs of one call share their target and retain models (the same forget set, seed
and models): the first run whose metrics.json names them (the rows' "checkpoint") gives them. Scores
on each half, before and after: forget probability (exp of minus the mean answer-token NLL), ROUGE-L recall of
greedy answers, and multiple-choice accuracy: on the toy its 4-option cloze questions about the same facts
(toy_mc, as the forget MC accuracy of the toy's tables), on TOFU by likelihood: the paraphrased answer beats
every perturbed answer (TOFU's perturbed answers rewrite the paraphrased one, as in the truth ratio).
"""
import argparse
import json
import os
import random
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")))
from alter import GatedLM, adapter_file, adapter_header, load_adapter  # noqa: E402
from data.batching import collate, encode_qa  # noqa: E402
from data.benchmarks import load_split  # noqa: E402
from evaluate import eval_mc_cloze, forget_eval_rows  # noqa: E402
from inference import avg_nll, generate, token_logps  # noqa: E402
from metrics import rouge_l, write_json  # noqa: E402
from model import GPT, linear_weights_in  # noqa: E402
from plan import device_and_dtype, keep_freed_memory, limit_kernel_cache, set_threads  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402


def checkpoint(m, which):
    """Where a run's target or retain model is: its row's "checkpoint" in metrics.json (train.py)."""
    return (m.get(which) or {}).get("checkpoint")


def load(run, which):
    """(model as deployed, tokenizer) of a run: which = "unlearned", "target" or "retain"."""
    m = json.load(open(os.path.join(run, "metrics.json")))
    adapter = adapter_file(run)
    if which != "unlearned":
        path = checkpoint(m, which)
        if not path:
            raise ValueError(f"{run}/metrics.json names no {which} checkpoint (a run from before they were recorded)")
        model = GPT.from_pretrained(path, verbose=False)
        return model, Tokenizer.from_pretrained(path)
    if not os.path.exists(adapter):
        path = os.path.join(run, "model")
        return GPT.from_pretrained(path, verbose=False), Tokenizer.from_pretrained(path)
    h = adapter_header(adapter)
    model = GPT.from_pretrained(h["base_model"], verbose=False)
    load_adapter(model, adapter)
    lm = GatedLM.from_header(model, h)
    return lm, Tokenizer.from_pretrained(h["base_model"])


def split(rows, seed):
    """(relearned, held-out) row indices: within each person (toy) or author (TOFU: 20 questions each, in order)
    a seeded random half of the questions is relearned, the rest held out, so both halves cover every kind of
    fact and every person."""
    groups = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.get("person", i // 20), []).append(i)
    rng = random.Random(seed)
    relearned = sorted(i for idx in groups.values() for i in rng.sample(idx, len(idx) // 2))
    return relearned, [i for i in range(len(rows)) if i not in relearned]


@torch.no_grad()
def score(lm, tok, rows, cfg, dtype, mc_rows=None):
    """Forget probability, ROUGE-L recall and multiple-choice accuracy of `rows`, as evaluate.py computes them
    (the run's attention-mask rule and autocast dtype). MC: the toy's 4-option cloze questions about the same
    facts (`mc_rows`, toy_mc); on TOFU the paraphrased answer against its perturbed rewrites, by likelihood."""
    kw = dict(batch_size=16, device="cpu", mask_rule=cfg["eval_mask"])
    logps = lambda key, desc: avg_nll(token_logps(lm, encode_qa(tok, rows, key), tok.pad_id, desc=desc, **kw))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"), linear_weights_in(lm, dtype):
        nll = logps("answer", "answers")
        gens = generate(lm, tok, [tok.prompt_ids(r["question"]) for r in rows], 200, desc="generate", **kw)
        if mc_rows:
            mc = eval_mc_cloze(lm, tok, mc_rows, 16)
        else:
            wrong = logps("perturbed_answer", "perturbed").reshape(len(rows), -1)
            mc = (logps("paraphrased_answer", "paraphrased")[:, None] < wrong).all(1)
    rouge = rouge_l([r["answer"] for r in rows], gens, "recall")
    return {"prob": float(np.exp(-nll).mean()), "rouge": float(rouge.mean()), "mc_acc": float(np.mean(mc))}


def attack(lm, tok, rows, steps, lr, dtype):
    """Full-batch fine-tuning of every parameter on the answers of `rows` (NLL of the answer tokens)."""
    b = collate(encode_qa(tok, rows, "answer"), tok.pad_id)
    lab = b["y"] != -100
    params = list(lm.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            logits, _ = lm(b["x"], attention_mask=b["mask"], keep=lab)
            loss = F.cross_entropy(logits.float(), b["y"][lab])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(round(loss.item(), 4))
    for p in params:
        p.requires_grad_(False)
    return losses


def attack_lr(run, lr=None):
    """The attack's learning rate: `lr`, else a tenth of the run's target fine-tuning rate (--ft-lr)."""
    return lr or json.load(open(os.path.join(run, "config.json")))["ft_lr"] / 10


def relearn(run, which, steps, lr=None, seed=0):
    """The attack on one model of one run: {"before": {...}, "after": {...}} on both halves, and the losses.
    `seed`: the split's and the attack's."""
    cfg = json.load(open(os.path.join(run, "config.json")))
    bench, pct = cfg["forget"].split("_")[0], cfg["forget"][-2:]
    if bench not in ("toy", "tofu"):
        raise ValueError(f"{run}: the attack needs question-answer forgetting, not {cfg['forget']}")
    rows = forget_eval_rows(bench, pct, cfg["data_dir"], cfg["seed"], cfg.get("forget_pair"))[:cfg["eval_limit"]]
    idx = dict(zip(("relearned", "held_out"), split(rows, seed)))
    halves = {h: [rows[i] for i in ii] for h, ii in idx.items()}
    mc = {h: None for h in halves}
    if bench == "toy":  # toy_mc asks about the same (person, fact) pairs, in the same order
        mc_rows = load_split(f"toy_mc_forget{pct}", seed=cfg["seed"])[:cfg["eval_limit"]]
        assert [r["person"] for r in mc_rows] == [r["person"] for r in rows], "toy_mc and forget rows differ"
        mc = {h: [mc_rows[i] for i in ii] for h, ii in idx.items()}
    lm, tok = load(run, which)
    tok.system = cfg["system_prompt"]
    lm.eval()
    dtype = device_and_dtype(argparse.Namespace(device="cpu", dtype=cfg["dtype"]), lm.config.n_embd)[1]
    out = {"before": {h: score(lm, tok, r, cfg, dtype, mc[h]) for h, r in halves.items()}}
    torch.manual_seed(seed)
    lr = attack_lr(run, lr)
    out["losses"] = attack(lm, tok, halves["relearned"], steps, lr, dtype)
    out["after"] = {h: score(lm, tok, r, cfg, dtype, mc[h]) for h, r in halves.items()}
    out.update(steps=steps, lr=lr, seed=seed, relearned=idx["relearned"], held_out=idx["held_out"])
    return out


def table(files):
    """Markdown: every model of the result files (one per seed or forget pair), the held-out half before -> after
    the attack, mean ± sample standard deviation over the files."""
    res = [json.load(open(f)) for f in files]
    names = ["target", "retain"] + sorted({k for r in res for k in r} - {"target", "retain"})
    lines = ["| model | n | held-out forget prob: before → after | held-out ROUGE: before → after "
             "| held-out MC acc: before → after | relearned half, prob after |", "|---|---|---|---|---|---|"]
    for name in names:
        rs = [r[name] for r in res if name in r]
        cell = lambda when, half, k: (lambda v: f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else ""))(
            np.array([r[when][half][k] for r in rs]))
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(
            f"{cell('before', 'held_out', k)} → {cell('after', 'held_out', k)}" for k in ("prob", "rouge", "mc_acc"))
            + f" | {cell('after', 'relearned', 'prob')} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description="the relearning attack on unlearned models (and their target/retain)")
    p.add_argument("runs", nargs="*", help="train.py run folders")
    p.add_argument("--out", help="JSON file: {run name: {target, retain, unlearned}}; resumable")
    p.add_argument("--table", nargs="+", metavar="FILE", help="print the table of these result files instead")
    p.add_argument("--steps", type=int, default=10, help="fine-tuning steps of the attack")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate of the attack (default: a tenth of the run's --ft-lr)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.table:
        return print(table(args.table))
    if not args.runs or not args.out:
        p.error("give run folders and --out (or --table FILE ...)")
    set_threads(args)
    keep_freed_memory()
    limit_kernel_cache()
    res = json.load(open(args.out)) if os.path.exists(args.out) else {}
    has = lambda r: checkpoint(json.load(open(os.path.join(r, "metrics.json"))), "retain")
    refs = next((r for r in args.runs if has(r)), None)  # where the target and retain models are named
    if refs is None:
        p.error("none of the runs' metrics.json names its target and retain checkpoints")
    for run in args.runs:
        name = os.path.basename(os.path.normpath(run))
        for which in ("target", "retain", "unlearned"):
            key = name if which == "unlearned" else which
            src = run if which == "unlearned" else refs
            done = res.get(key, {})
            if (done.get("steps"), done.get("lr"), done.get("seed")) == (args.steps, attack_lr(src, args.lr), 0):
                continue  # done (the target and retain once: every run of a file shares them)
            res[key] = relearn(src, which, args.steps, args.lr)
            a, b = res[key]["before"]["held_out"], res[key]["after"]["held_out"]
            print(f"{key}: held-out prob {a['prob']:.3f} -> {b['prob']:.3f}, ROUGE {a['rouge']:.3f} -> "
                  f"{b['rouge']:.3f}, MC acc {a['mc_acc']:.3f} -> {b['mc_acc']:.3f}", flush=True)
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            write_json(args.out, res)


if __name__ == "__main__":
    main()
