"""
The model calls of evaluation, batched by length: log-probs of labelled spans (TOFU and MUSE scoring), greedy
generation, and the logits at each prompt's last position (multiple choice). Each forward runs the output layer at
the positions read alone (GPT.forward's keep); results come back in the callers' order.
"""
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.batching import collate, collate_prompts

# padded tokens per forward. Only the positions that are read get logits (GPT.forward's keep), so this bounds the
# activations; larger batches of short prompts gain little on a CPU, while a long batch's padding would cost
MAX_BATCH_TOKENS = 8192

# Which tokens the attention mask hides in TOFU and MUSE metrics. "ou" is open-unlearning's collator:
# attention_mask = ids != pad_id, and pad = EOS, so the end-of-turn tokens inside a chat prompt are hidden too
# (SmolLM2's <|im_end|>, Llama-3's <|eot_id|>); scoring runs with positions 0..T-1 (transformers' default),
# generation with positions counting unmasked tokens (transformers' generate). "padding" hides padding only.
# Multiple choice (lm-eval) always masks padding only: lm-eval does not mask EOS.
MASK_RULES = ("ou", "padding")


def check_mask_rule(mask_rule):
    """A ValueError naming the valid rules for anything not in MASK_RULES."""
    if mask_rule not in MASK_RULES:
        raise ValueError(f"unknown mask rule {mask_rule!r}; valid: {', '.join(MASK_RULES)}")


def score_mask(x, mask, pad_id, mask_rule):
    """(attention_mask, position_ids) of a scoring forward: "ou" hides every pad (= EOS) token, positions
    0..T-1; "padding" hides padding alone, positions from the mask (the model's default)."""
    if mask_rule == "ou":
        return mask.bool() & (x != pad_id), torch.arange(x.size(1), device=x.device)[None]
    return mask, None


def _by_length(n_items, lengths, batch_size):
    """Batches of indices, longest first so padding is small, of at most batch_size items and
    MAX_BATCH_TOKENS padded tokens; the caller puts results back in place."""
    order = sorted(range(n_items), key=lambda i: -lengths[i])
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) == batch_size or (len(cur) + 1) * lengths[cur[0]] > MAX_BATCH_TOKENS):
            batches.append(cur)
            cur = []
        cur.append(i)
    return batches + ([cur] if cur else [])


@torch.no_grad()
def token_logps(lm, examples, pad_id, batch_size=16, device="cpu", desc="score", mask_rule="ou"):
    """Log-prob of every labelled token of each (ids, n_prompt) example: a list of 1-D tensors.
    mask_rule: see MASK_RULES."""
    check_mask_rule(mask_rule)
    out = [None] * len(examples)
    lengths = [len(e[0]) for e in examples]
    for idx in tqdm(_by_length(len(examples), lengths, batch_size), desc=desc, leave=False, disable=None):
        b = collate([examples[i] for i in idx], pad_id, device)
        lab = b["y"] != -100  # logits at the labelled positions alone: (n, V), row by row
        am, pos = score_mask(b["x"], b["mask"], pad_id, mask_rule)
        logits, _ = lm(b["x"], attention_mask=am, position_ids=pos, keep=lab)
        logp = -F.cross_entropy(logits.float(), b["y"][lab], reduction="none").cpu()  # (n,)
        for i, lp in zip(idx, logp.split(lab.sum(1).tolist())):
            out[i] = lp
    return out


def avg_nll(logps):
    """open-unlearning's per-item avg_loss: mean token NLL over the labelled span (answer, end tags, EOS)."""
    return np.array([-lp.mean().item() for lp in logps])


@torch.no_grad()
def generate(lm, tok, prompts, max_new_tokens, batch_size=16, device="cpu", desc="generate", mask_rule="ou"):
    """Greedy continuations of token-id prompts, cut at the first end token, decoded and stripped.
    mask_rule: see MASK_RULES."""
    check_mask_rule(mask_rule)
    stops = sorted(set(lm.config.eos_token_id) | {tok.eos_id})
    room = lm.config.block_size - max_new_tokens  # a prompt too long for the context keeps its end
    prompts = [p[-room:] for p in prompts]
    out = [None] * len(prompts)
    for idx in tqdm(_by_length(len(prompts), [len(p) for p in prompts], batch_size), desc=desc, leave=False,
                    disable=None):
        x, am = collate_prompts([prompts[i] for i in idx], tok.pad_id, device)
        if mask_rule == "ou":
            am = am * (x != tok.pad_id)
        new = lm.generate(x, attention_mask=am, max_new_tokens=max_new_tokens, eos_token_id=stops).tolist()
        for j, i in enumerate(idx):
            ids = new[j]
            cut = next((k for k, t in enumerate(ids) if t in stops), len(ids))
            out[i] = tok.decode(ids[:cut]).strip()
    return out


@torch.no_grad()
def last_logits(lm, prompts, pad_id, batch_size=16, device="cpu", desc="mc"):
    """Logits at the last token of each prompt: (n, V), batched by length (one row per question). Rows are
    right-padded, so every read position precedes its row's padding: causal attention alone is exact there,
    and the forward runs without a mask (SDPA's causal kernel) and with the output layer at those positions."""
    out = [None] * len(prompts)
    for idx in tqdm(_by_length(len(prompts), [len(p) for p in prompts], batch_size), desc=desc, leave=False,
                    disable=None):
        b = collate([(prompts[i] + [pad_id], len(prompts[i])) for i in idx], pad_id, device)
        last = torch.tensor([len(prompts[i]) - 1 for i in idx], device=b["x"].device)
        logits, _ = lm(b["x"], keep=(torch.arange(len(idx), device=last.device), last))
        for j, i in enumerate(idx):
            out[i] = logits[j].float().cpu()
    return torch.stack(out)
