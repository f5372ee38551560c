"""
Records -> tensors. Training and scoring batches are right-padded and already shifted for next-token
prediction: x[b, t] is the input token and y[b, t] the token to predict from it (x_{t+1}), with -100 where
nothing is predicted (prompt, padding). So the loss at position t, the logits at t and the token entropy at t
(entropy.py) all line up. Generation batches are left-padded prompts with an attention mask.
"""
import random

import torch
import torch.nn.functional as F


def encode_qa(tok, rows, answer_key="answer", system_prompt=None, few_shot=()):
    """(ids, n_prompt) per record: prompt + answer (+ EOS) in the model's prompt format. `answer_key` may name
    a list field (perturbed answers): then each record gives one example per answer, flattened in order."""
    out = []
    for r in rows:
        answers = r[answer_key] if isinstance(r[answer_key], list) else [r[answer_key]]
        out += [tok.encode_qa(r["question"], a, system_prompt, few_shot) for a in answers]
    return out


def encode_text(tok, texts, block_size):
    """Raw text as training examples, as open-unlearning's PretrainingDataset: texts joined by "\n\n",
    tokenized once, cut into windows of block_size tokens; every token of a window but its first is predicted."""
    ids = tok.encode("\n\n".join(texts))
    windows = [ids[i:i + block_size] for i in range(0, len(ids), block_size)]
    return [(w, 0) for w in windows if len(w) > 1]


def collate(examples, pad_id, device="cpu"):
    """Right-padded, shifted batch: x (B, T), y (B, T) with -100 on prompt and padding, mask (B, T)."""
    T = max(len(ids) for ids, _ in examples) - 1
    B = len(examples)
    x = torch.full((B, T), pad_id, dtype=torch.long)
    y = torch.full((B, T), -100, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, (ids, n_prompt) in enumerate(examples):
        ids = torch.tensor(ids)
        n = len(ids) - 1
        x[b, :n] = ids[:-1]
        mask[b, :n] = 1
        start = max(n_prompt - 1, 0)  # y[t] = ids[t+1]: the first labelled target is ids[n_prompt]
        y[b, start:n] = ids[start + 1:]
    return {"x": x.to(device), "y": y.to(device), "mask": mask.to(device)}


def batches(examples, pad_id, device="cpu", size=16):
    """The examples in order, `size` at a time, each chunk a collated batch (for passes without gradients)."""
    for i in range(0, len(examples), size):
        yield collate(examples[i:i + size], pad_id, device)


def label_logps(logits, y):
    """Log-prob of each target token: (B, T) from logits (B, T, V) and targets y (B, T), 0 where y is -100.
    Flattened to (B*T, V): cross_entropy over a transposed (B, V, T) view is ~7x slower on CPU."""
    logp = -F.cross_entropy(logits.float().flatten(0, 1), y.clamp(min=0).flatten(), reduction="none")
    return logp.view(y.shape) * (y != -100)


def collate_prompts(prompts, pad_id, device="cpu"):
    """Left-padded prompts for generation: idx (B, T), attention_mask (B, T)."""
    T = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    am = torch.zeros(len(prompts), T, dtype=torch.long)
    for b, p in enumerate(prompts):
        idx[b, T - len(p):] = torch.tensor(p)
        am[b, T - len(p):] = 1
    return idx.to(device), am.to(device)


def batch_indices(n, batch_size, seed=0, epoch=0, shuffle=True):
    """Index lists of one epoch; the order depends only on (seed, epoch)."""
    order = list(range(n))
    if shuffle:
        random.Random(seed * 100003 + epoch).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]
