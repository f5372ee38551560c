"""
Token entropy: which tokens carry knowledge and which carry structure (ALTER §"Tsallis entropy").

    S_q(p) = (1 - sum_i p_i^q) / (q - 1)          Tsallis entropy, q > 0; q -> 1 gives Shannon -sum p log p

H_t = S_q(p_base(. | x_<=t)) is the entropy of the *frozen* model's prediction at position t, i.e. of its
distribution over x_{t+1}; it lines up with the loss at position t (data/batching.py shifts the targets the
same way). Low H_t: the base model is sure of the next token (a name, a date: knowledge). High H_t: many
continuations are plausible (structure). ALTER marks a token high when H_t > theta (paper: theta = 1.2; with
q = 1.5, S_q lies in [0, 2)).

`profile` computes H_t for a whole dataset in one no-grad pass and caches it on disk per (model, data, q),
together with the base model's top-k next-token log-probs at every labelled position, which the structural
invariance term of Phase II uses (alter.py), so training pays no extra forward pass per step.
"""
import hashlib
import json
import os

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.batching import collate


def tsallis(logits, q, dim=-1):
    """S_q of softmax(logits) along dim, in fp32. Exact Shannon entropy at q = 1, stable near it."""
    logp = F.log_softmax(logits, dim=dim, dtype=torch.float32)
    if abs(q - 1) >= 0.25:  # sum_i p_i^q = sum_i exp(q log p_i); without autograd in place (no other temporary
        # of the logits' size). Nearer q = 1, 1 - sum_i p_i^q cancels: the expm1 form below keeps the precision
        pq = (logp * q).exp() if logp.requires_grad else logp.mul_(q).exp_()
        return (1 - pq.sum(dim)) / (q - 1)
    if q == 1.0:
        return -(logp.exp() * logp).sum(dim)
    # 1 - sum_i p_i^q = -sum_i (p_i^q - p_i) = -sum_i p_i * expm1((q - 1) log p_i): exact for every q and
    # precise as q -> 1. Where (q - 1) log p_i is large (q < 1, p_i ~ 0), p_i^q - p_i is computed directly.
    a = (q - 1) * logp
    p = logp.exp()
    term = torch.where(a < 20, p * torch.expm1(a.clamp(max=20)), torch.exp(q * logp) - p)
    return -term.sum(dim) / (q - 1)


def head_entropy(head, h, q, chunk=256):
    """S_q of the next-token distribution at every position of hidden states h (B, T, C) through the output
    layer `head`: (B, T) in fp32, `chunk` positions at a time, so the (B, T, V) logits never exist at once."""
    flat = h.reshape(-1, h.size(-1))
    return torch.cat([tsallis(head(c), q) for c in flat.split(chunk)]).view(h.shape[:-1])


def threshold(entropies, theta=1.2, quantile=None, min_high=0.05):
    """The high/low cut over a 1-D tensor of answer-token entropies. Absolute theta (the paper's), or the
    given quantile. If theta marks fewer than min_high of the tokens high (a model trained to near-zero loss
    is sure of everything), the (1 - min_high) quantile is used instead and the reason is returned.
    Returns (theta_used, fraction_high, note)."""
    if quantile is not None:
        t = torch.quantile(entropies, quantile).item()
        return t, (entropies > t).float().mean().item(), f"quantile {quantile}"
    frac = (entropies > theta).float().mean().item()
    if frac >= min_high:
        return theta, frac, "absolute"
    t = torch.quantile(entropies, 1 - min_high).item()
    return t, (entropies > t).float().mean().item(), \
        f"theta={theta} marked only {frac:.1%} high; fell back to the {1 - min_high:.2f} quantile"


def fingerprint(model, examples, q, topk):
    """A short hash of (model weights, token ids, q, topk): the profile cache key."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        h.update(name.encode() + flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    h.update(json.dumps([examples, q, topk]).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def profile(model, examples, q=1.5, pad_id=0, batch_size=16, cache_dir=None, topk=32, device="cpu", desc="entropy"):
    """Per example: H_t at every input position t (len(ids) - 1 values) and, at the labelled positions,
    the base model's top-k next-token ids and log-probs. The model is run as it is: call with adapters off.
    Cached as cache_dir/entropy-<hash>.pt; a second call with the same (model, data, q) runs no forward."""
    path = None
    if cache_dir:
        path = os.path.join(cache_dir, f"entropy-{fingerprint(model, examples, q, topk)}.pt")
        if os.path.exists(path):
            return torch.load(path, weights_only=True)
    was_training = model.training
    model.eval()
    out = []
    for i in tqdm(range(0, len(examples), batch_size), desc=desc, leave=False, disable=None):
        chunk = examples[i:i + batch_size]
        b = collate(chunk, pad_id, device)
        h = model(b["x"], attention_mask=b["mask"], hidden_only=True)
        H = head_entropy(model.lm_head, h, q)  # (B, T); the (B, T, V) logits never exist at once
        for j, (ids, _) in enumerate(chunk):
            n = len(ids) - 1
            lab = (b["y"][j, :n] != -100)
            logits = model.lm_head(h[j, :n][lab])  # (labelled positions, V)
            top = torch.topk(F.log_softmax(logits.float(), -1), min(topk, logits.size(-1)), dim=-1)
            out.append({"H": H[j, :n].cpu().clone(), "top_ids": top.indices.int().cpu(),
                        "top_logp": top.values.half().cpu()})
    model.train(was_training)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        torch.save(out, path + ".tmp")
        os.replace(path + ".tmp", path)
    return out


def pad_profile(items, key, T, fill=0.0):
    """Stack one field of profile items into a right-padded (B, T) tensor, aligned with collate's x."""
    out = torch.full((len(items), T), fill)
    for b, it in enumerate(items):
        out[b, :len(it[key])] = it[key]
    return out
