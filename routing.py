"""
How an adapted model's gate routes (the routing diagnostics of every evaluation of an ALTER or AsymLoRA model):
on the answer tokens of each evaluated set, the share above theta, the top-1 expert of each block's gates, and
whether forget rows reach their own sub-domain's expert. train.py and evaluate.py write it into metrics.json
("routing") and print it; README, "Where ALTER's forgetting comes from".
"""
import torch
from tqdm import tqdm

from data.batching import collate, encode_qa
from data.benchmarks import load_split
from evaluate import forget_eval_rows
from inference import score_mask


@torch.no_grad()
def gate_report(lm, examples, pad_id, labels=None, batch_size=16, device="cpu", mask_rule="padding"):
    """What the gate of GatedLM `lm` does on the answer tokens of (ids, n_prompt) examples (every token but the
    first of a text window): the share marked high-entropy under lm.theta, and the expert that each block's
    gates weigh most (its top-1; the router's argmax except under the oracle gate), as shares of the tokens
    and blocks. labels: each example's sub-domain expert, or None (no sub-domain) - then `sub_domain_acc` is
    the share of the labelled rows' tokens whose top-1 is their sub-domain's expert, at low-entropy tokens
    (where the forget experts act) and at all. mask_rule: the attention mask (inference.MASK_RULES),
    as the scores of the same examples use it."""
    E = lm.model.alter_config.n_total
    top = torch.zeros(2, E)  # top-1 counts over blocks: [low, high] x expert
    hit, hit_n = torch.zeros(2), torch.zeros(2)  # sub-domain hits, labelled tokens: [low, all]
    blocks = {}  # block -> [low-entropy tokens to a forget expert, low-entropy tokens, their sub-domain hits, labelled]
    labels = labels if labels is not None else [None] * len(examples)
    for i in range(0, len(examples), batch_size):
        b = collate(examples[i:i + batch_size], pad_id, device)
        x = b["x"]
        am, pos = score_mask(x, b["mask"], pad_id, mask_rule)
        ans = b["y"] != -100
        lm(x, attention_mask=am, position_ids=pos, keep=ans)
        high = lm.route.high if lm.route.high is not None else lm.high_entropy(x, am, position_ids=pos)
        lab = torch.tensor([-1 if d is None else d for d in labels[i:i + batch_size]], device=x.device)[:, None]
        for block, g in lm.route.gates.items():
            choice = g.argmax(-1)  # (B, T)
            for k, where in enumerate((ans & ~high, ans & high)):
                top[k] += torch.bincount(choice[where], minlength=E).cpu().float()
            for k, where in enumerate((ans & ~high & (lab >= 0), ans & (lab >= 0))):
                hit[k] += (choice[where] == lab.expand_as(choice)[where]).sum().item()
                hit_n[k] += where.sum().item()
            low, low_lab = ans & ~high, ans & ~high & (lab >= 0)
            c = blocks.setdefault(block, torch.zeros(4))
            c += torch.tensor([(choice[low] > 0).sum().item(), low.sum().item(),
                               (choice[low_lab] == lab.expand_as(choice)[low_lab]).sum().item(), low_lab.sum().item()])
    share = lambda a, b: round(float(a / b), 4) if b > 0 else None
    n = top.sum()
    out = {"tokens": int(n.item() / max(1, len(lm.route.gates))), "high": share(top[1].sum(), n),
           "low_to_forget": share(top[0, 1:].sum(), top[0].sum()),
           "high_to_forget": share(top[1, 1:].sum(), top[1].sum()),
           "usage": [share(u, n) for u in top.sum(0)],
           "low_to_forget_by_block": [share(c[0], c[1]) for _, c in sorted(blocks.items())]}
    if hit_n[1] > 0:
        out.update(sub_domain_acc_low=share(hit[0], hit_n[0]), sub_domain_acc=share(hit[1], hit_n[1]),
                   sub_domain_acc_low_by_block=[share(c[2], c[3]) for _, c in sorted(blocks.items())])
    return out


def routing_diagnostics(lm, tok, benches, data_dir=None, limit=None, batch_size=16, device="cpu", seed=0,
                        mask_rule="ou", extra=None, forget_pair=None):
    """How an ALTER model's gate routes (gate_report) the answer tokens of every evaluated question-answer
    set: forget (its answers, which are the forget training rows, paraphrased and perturbed answers), retain,
    real authors, world facts; plus `extra` {name: (examples, labels)} (train.py adds the training rows of text
    forgetting). A forget row's label is its question's sub-domain (lm.experts). {set: report}."""
    sets = dict(extra or {})
    for bench in benches:
        if bench.startswith(("tofu_", "toy_forget")):
            b, pct = bench.split("_")[0], bench[-2:]
            L = lambda name: load_split(f"{b}_{name}", data_dir, seed)[:limit]
            f = forget_eval_rows(b, pct, data_dir, seed, forget_pair)[:limit]
            for name, rows, key in (("forget", f, "answer"), ("forget_paraphrased", f, "paraphrased_answer"),
                                    ("forget_perturbed", f, "perturbed_answer"), ("retain", L("retain_perturbed"),
                                    "answer"), ("real_authors", L("real_authors_perturbed"), "answer"),
                                    ("world_facts", L("world_facts_perturbed"), "answer")):
                ex = encode_qa(tok, rows, key)
                sets[name] = (ex, [lm.expert_of(*e) for e in ex])
            if lm.experts and all(d is None for d in sets["forget"][1]):
                raise ValueError("no forget question matches the adapter's sub-domains (its forget questions' "
                                 "prompt ids): another system prompt, forget set or --forget-pair than the run's?")
    return {name: gate_report(lm, ex, tok.pad_id, labels, batch_size, device, mask_rule)
            for name, (ex, labels) in tqdm(sets.items(), desc="routing", leave=False, disable=None)}


def print_routing(report, lm):
    """The routing diagnostics as a short block."""
    print(f"\nrouting: gate {lm.gate}, S_{lm.q:g} > theta {lm.theta:.3f} is high-entropy; top-1 expert of each block's "
          f"gates (0 = B_r), shares over answer tokens and blocks")
    print(f"{'set':<20}{'tokens':>8}{'high':>7}{'low->B_f':>10}{'high->B_f':>11}{'->B_r':>7}{'sub-domain acc':>16}  "
          "usage by expert")
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"
    for name, r in report.items():
        acc = f"{fmt(r['sub_domain_acc_low'])} / {fmt(r['sub_domain_acc'])}" if "sub_domain_acc" in r else ""
        print(f"{name:<20}{r['tokens']:>8}{fmt(r['high']):>7}{fmt(r['low_to_forget']):>10}"
              f"{fmt(r['high_to_forget']):>11}{fmt(r['usage'][0]):>7}{acc:>16}  {' '.join(map(fmt, r['usage']))}")
    print("(low->B_f: low-entropy tokens whose top-1 is a forget expert; sub-domain acc: low-entropy / all tokens "
          "whose top-1 is their question's sub-domain)")
