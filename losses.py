"""The loss terms that ALTER and its baselines share: each one small function of logits (..., V) and targets y
(...) on a boolean mask (...), the (B, T) positions of a batch or (as the training losses pass them) its n
labelled positions, row-major; and the batch's masks and labelled forward pass they read."""
import torch
import torch.nn.functional as F

from data.batching import label_logps


def at(t, where):
    """t[where], the entries of t at the True positions of the mask `where` (the leading dims of t), as rows. The
    gradient goes back by index_add: boolean indexing's, an accumulating index_put, took 3 times as long on a
    CPU and a third of the toy's unlearning step (n x 50,257 rows, once per loss term)."""
    return t.flatten(0, where.dim() - 1).index_select(0, where.flatten().nonzero().squeeze(1))


def nll(logits, y, where):
    """Mean next-token cross-entropy over the positions in `where`."""
    return F.cross_entropy(at(logits, where).float(), y[where]) if where.any() else logits.sum() * 0


def ihl(logits, y, where):
    """Inverted hinge loss (Cha et al. 2024, arXiv 2408.06621), mean over `where`:
    IHL_t = 1 + p(y_t) - max_{v != y_t} p(v). Pushes the true token down and the runner-up up."""
    if not where.any():
        return logits.sum() * 0
    p = F.softmax(at(logits, where).float(), dim=-1)  # (n, V)
    t = y[where]
    p_true = p.gather(1, t[:, None]).squeeze(1)
    p_other = p.scatter(1, t[:, None], -1.0).max(1).values
    return (1 + p_true - p_other).mean()


def struct_kl(logits, top_ids, top_logp, where):
    """Structural invariance: KL(p_base || p_theta) at the positions in `where`, on the base model's top-k
    support cached by entropy.profile (top_ids, top_logp: (n, k) for the n positions, in order):
    sum_k p_base,k (log p_base,k - log p_theta,k). Truncated to top-k, it leaves out the base tail."""
    if not where.any():
        return logits.sum() * 0
    logq = F.log_softmax(at(logits, where).float(), dim=-1).gather(1, top_ids.long())  # (n, k)
    logp = top_logp.float()
    return (logp.exp() * (logp - logq)).sum(1).mean()


def routing_ce(route, labels, where):
    """Cross-entropy of every block's router (temperature 1) in a routed pass against the expert labels, mean
    over blocks."""
    return torch.stack([F.cross_entropy(lg[where], labels[where]) for lg in route.logits.values()]).mean()


def seq_logp(logits, y):
    """Summed log-prob of the labelled tokens of each row: (B,)."""
    return label_logps(logits, y).sum(1)


def forget_ihl(logits, y, where, expert):
    """The forget term: sum over the sub-domains d in the batch of the mean IHL on d's positions within `where`
    (expert: each position's row expert, the shape of where)."""
    assert expert.shape == where.shape, f"forget_ihl: one expert per position, {tuple(where.shape)}"
    return sum((ihl(logits, y, where & (expert == d)) for d in expert[expert > 0].unique().tolist()),
               logits.sum() * 0)


def masks(batch):
    """The labelled positions of forget rows and of retain rows, and every token's expert label: the row's
    expert where the answer is predicted, the retain expert (0) on the prompt, which forget and retain
    questions share ("Question: Where was ..."): the router cannot tell them apart there, and the question
    is not what is forgotten."""
    y, expert = batch["y"], batch["expert"]
    lab = y != -100
    return (expert > 0)[:, None] & lab, (expert == 0)[:, None] & lab, torch.where(lab, expert[:, None], 0)


def labelled_forward(model, batch):
    """The model's logits at the batch's labelled positions alone, (n, V) row-major, and (lab, y[lab]): the
    token-level losses (ALTER's, AsymLoRA's, GradDiff's, GA's) read only these, and the output layer over all
    (B, T) positions, forward and backward, was most of a small model's unlearning step (the toy's: 50,257-way,
    4 of every 10 positions labelled). NPO and SimNPO sum log-probs per row: they take the (B, T, V) logits."""
    lab = batch["y"] != -100
    logits, _ = model(batch["x"], attention_mask=batch["mask"], keep=lab)
    return logits, lab, batch["y"][lab]
