"""What a router could read: linear probes of the routing label from each block's input on the frozen toy target.
    python experiments/router_probe.py [--seed 0] [--steps 600]
The label of an answer token is its forget question's sub-domain (alter.cluster, as train.py computes it) or 0
(B_r) for a retain question's. A probe per block and input is fitted by full-batch Adam on the forget and retain
training rows, then read on the paraphrased answers of the same forget questions and of the retain questions.
Inputs: the block's normalised input at the token (what a "token" router reads), and its running mean over the
row so far (what a "prefix" router adds). Runs in about a minute on 2 CPU cores, on the cached target of a toy
run with the same seed (python train.py --forget toy_forget10 --seed N)."""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from alter import cluster  # noqa: E402
from data.batching import collate, encode_qa  # noqa: E402
from data.benchmarks import load_split  # noqa: E402
from data.forget_sets import unlearning_examples  # noqa: E402
from finetune import cache_path  # noqa: E402
from model import GPT  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--seed", type=int, default=0)
p.add_argument("--steps", type=int, default=600)
p.add_argument("--cache", default="out/cache")
a = p.parse_args()
args = argparse.Namespace(forget="toy_forget10", data_dir=None, seed=a.seed, limit=None, authors=None,
                          system_prompt=None, block_size=64, ft_epochs=16, ft_lr=3e-3, ft_batch_size=16, model="tiny",
                          cache=a.cache)
tok = Tokenizer.gpt2()
path = cache_path("toy", "full", tok, args, argparse.Namespace(dtype="float32"))[0]
if not os.path.exists(os.path.join(path, "config.json")):
    sys.exit(f"no cached toy target for seed {a.seed} in {a.cache}: run python train.py --forget toy_forget10 "
             f"--seed {a.seed} first")
torch.manual_seed(0)
model = GPT.from_pretrained(path, verbose=False).eval()
forget, retain = unlearning_examples(tok, args)
expert = cluster(model, forget, 4, tok.pad_id, a.seed)
seen = {}
for i, blk in enumerate(model.transformer.h):
    blk.ln_1.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, out.detach()))


def features(examples, labels):
    """{(block, input): (n, C)} at the answer tokens, and their labels (n,)."""
    X, Y = {}, []
    for j in range(0, len(examples), 16):
        b = collate(examples[j:j + 16], tok.pad_id)
        with torch.no_grad():
            model(b["x"], attention_mask=b["mask"])
        ans, m = b["y"] != -100, b["mask"][..., None].float()
        for i, h in seen.items():
            X.setdefault((i, "token"), []).append(h[ans])
            X.setdefault((i, "prefix mean"), []).append(((h * m).cumsum(1) / m.cumsum(1))[ans])
        Y.append(torch.tensor(labels[j:j + 16])[:, None].expand_as(ans)[ans])
    return {k: torch.cat(v) for k, v in X.items()}, torch.cat(Y)


X, Y = features(forget + retain, expert + [0] * len(retain))
para_f = encode_qa(tok, load_split("toy_forget10_perturbed", seed=a.seed), "paraphrased_answer")
para_r = encode_qa(tok, load_split("toy_retain_perturbed", seed=a.seed), "paraphrased_answer")
Xf, Yf = features(para_f, expert)
Xr, _ = features(para_r, [0] * len(para_r))
print(f"seed {a.seed}: sub-domain sizes {[expert.count(d) for d in range(1, 5)]}, {len(Y)} answer tokens")
print(f"{'block':>5} {'input':<12} {'forget rows: right expert':>26} {'retain rows: B_r':>17} "
      f"{'paraphrased forget: right':>26} {'paraphrased retain: B_r':>24}")
for k in X:
    probe = torch.nn.Linear(X[k].size(1), 5)
    opt = torch.optim.Adam(probe.parameters(), 1e-2)
    for _ in range(a.steps):
        loss = F.cross_entropy(probe(X[k]), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred, pf, pr = probe(X[k]).argmax(-1), probe(Xf[k]).argmax(-1), probe(Xr[k]).argmax(-1)
    f = Y > 0
    print(f"{k[0]:>5} {k[1]:<12} {(pred[f] == Y[f]).float().mean():>26.2f} {(pred[~f] == 0).float().mean():>17.2f} "
          f"{(pf == Yf).float().mean():>26.2f} {(pr == 0).float().mean():>24.2f}")
