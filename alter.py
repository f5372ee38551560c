"""
ALTER: asymmetric LoRA with an entropy-aware router, its hierarchical loss, and the baselines' losses.

The paper's update of a frozen weight W0 (its Eq. for W; see README "paper <-> code"):

    W = W0 + (B_r + sum_d w_fd * B_fd) A          one shared A (r x in), experts B (out x r)

Here every adapted nn.Linear computes y = W0 x + (alpha/r) * sum_e g_e * B_e (A x) over E = N+1 experts:
expert 0 is the retain expert B_r, experts 1..N the forget experts B_fd, one per forget sub-domain d. The
gates g come from one router per block (softmax of a Linear on the block's normalised input, temperature
0.8 for high-entropy tokens and 0.01 for low-entropy ones). A fresh adapter is an exact no-op: all B = 0.

Gradient isolation (paper: "Strict Gradient Isolation") is by data source, not by position: a loss at one
position reaches every earlier position of its row through attention. So on each row, every expert but the
row's own (0 for a retain row, d for a forget row of sub-domain d) is a detached copy at every position: no
loss on a forget row reaches B_r, no retain-row loss reaches a B_fd, and sub-domain d reaches no other B_fd'.
The shared A gets the gradient of the high-entropy terms alone (`backward`: a separate autograd.grad for A;
"exact", the default), or, as an approximation, A x is detached at low-entropy positions ("position"),
which still lets low-entropy losses reach A through the high-entropy positions before them.

Training gates ("teacher", the default) are the one-hot labels: the router then learns only from the routing
cross-entropy. "soft" uses the router's own tempered softmax, as the paper's gate is written (README: why
teacher forcing is the default). At inference ("entropy"), the frozen model's token entropy picks the
temperature and the routing: the top-3 experts (renormalised) at high-entropy tokens, the argmax expert at
low-entropy ones; "router" skips the base pass and uses the router's dense softmax.
"""
import copy
import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from data.batching import collate
from entropy import tsallis
from model import GPT, read_safetensors, write_safetensors

# -----------------------------------------------------------------------------
# the router and the adapted Linear


class AlterState:
    """What the adapters need to know about the current batch, set by the caller before each forward.
    mode: "off" (adapters disabled: the frozen base model), "teacher" / "soft" (training), "entropy" /
    "router" (inference). labels (B, T) expert ids, high (B, T) high-entropy mask. Isolation (training):
    rows (B,) the expert of each row's data source, whose B alone is live on that row; a_live (B, T) the
    positions where A x keeps its gradient (the "position" approximation; None: everywhere)."""

    def __init__(self):
        self.set("router")

    def set(self, mode, labels=None, high=None, rows=None, a_live=None):
        self.mode, self.labels, self.high, self.rows, self.a_live = mode, labels, high, rows, a_live


@dataclass
class AlterConfig:
    rank: int = 8                 # r, the LoRA rank (paper: 8 for every LoRA variant)
    alpha: float = 16.0           # scaling = alpha / rank
    n_experts: int = 4            # forget experts N; expert 0 is the retain expert, so E = N + 1 B's
    router: bool = True           # False: plain LoRA, a single B and no router
    tau_high: float = 0.8         # router temperature at high-entropy tokens (paper)
    tau_low: float = 0.01         # ... at low-entropy tokens (paper)
    top_k_high: int = 3           # experts kept at high-entropy tokens at inference (paper: top-3)
    sites: tuple = ("c_attn", "c_proj", "c_fc", "q_proj", "k_proj", "v_proj", "o_proj",
                    "gate_proj", "up_proj", "down_proj")  # adapted Linears (every one inside the blocks)

    @property
    def n_total(self):
        return self.n_experts + 1 if self.router else 1


class Router(nn.Module):
    """One per block: gates (B, T, E) from the block's normalised input, shared by the block's adapters."""

    def __init__(self, d_model, n_total, cfg, state):
        super().__init__()
        self.proj = nn.Linear(d_model, n_total)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        self.cfg, self.state = cfg, state
        self.logits, self.gates = None, None

    def forward(self, h):
        st, cfg = self.state, self.cfg
        self.logits = self.proj(h).float()  # (B, T, E), kept for the routing loss
        E = self.logits.size(-1)
        if st.mode == "teacher":
            self.gates = F.one_hot(st.labels, E).float()
        elif st.mode == "router":
            self.gates = F.softmax(self.logits, dim=-1)
        else:  # "soft" (training) or "entropy" (inference): entropy-aware temperature, paper's gate
            tau = torch.where(st.high, cfg.tau_high, cfg.tau_low)[..., None]  # (B, T, 1)
            g = F.softmax(self.logits / tau, dim=-1)
            if st.mode == "entropy":  # sparse routing: top-3 at high-entropy tokens, top-1 at low ones
                k = torch.where(st.high, min(cfg.top_k_high, E), 1)[..., None]  # (B, T, 1)
                rank = g.argsort(dim=-1, descending=True).argsort(dim=-1)  # rank of each expert, 0 = best
                g = torch.where(rank < k, g, 0.0)
                g = g / g.sum(-1, keepdim=True)
            self.gates = g
        return self.gates


class AsymLoRALinear(nn.Module):
    """A frozen nn.Linear plus shared lora_A (r, in) and experts lora_B (E, out, r), mixed by router gates."""

    def __init__(self, base, cfg, router, state, computes_gates):
        super().__init__()
        self.base, self.state = base, state
        # a reference, not a submodule: the router belongs to its block (one set of parameters, one name)
        self.__dict__["router"] = router
        self.computes_gates = computes_gates  # the block's first adapter sees ln_1(x): it runs the router
        self.scaling = cfg.alpha / cfg.rank
        self.lora_A = nn.Parameter(torch.empty(cfg.rank, base.in_features))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and loralib) initialise A
        self.lora_B = nn.Parameter(torch.zeros(cfg.n_total, base.out_features, cfg.rank))  # B = 0: a no-op at start

    def forward(self, x):
        y = self.base(x)
        st = self.state
        if st.mode == "off":
            return y
        h = F.linear(x, self.lora_A)  # (B, T, r)
        if st.a_live is not None:  # "position" isolation of A: no gradient through low-entropy positions
            h = torch.where(st.a_live[..., None], h, h.detach())
        E, out, r = self.lora_B.shape
        if self.router is None:  # plain LoRA
            return y + self.scaling * F.linear(h, self.lora_B[0])
        g = self.router(x) if self.computes_gates else self.router.gates  # (B, T, E)
        z = g.to(h.dtype)[..., None] * h[..., None, :]  # (B, T, E, r): each expert's gated input
        Bflat = self.lora_B.permute(0, 2, 1).reshape(E * r, out)  # (E*r, out): all experts in one matmul
        if st.rows is not None:  # isolation by data source: on each row only the row's own expert is live
            own = F.one_hot(st.rows, E).to(z.dtype)[:, None, :, None]  # (B, 1, E, 1)
            delta = (z * own).flatten(-2) @ Bflat + (z * (1 - own)).flatten(-2) @ Bflat.detach()
        else:
            delta = z.flatten(-2) @ Bflat  # (B, T, out)
        return y + self.scaling * delta

# -----------------------------------------------------------------------------
# attaching, trainable parameters, saving and loading


def attach(model, cfg):
    """Freeze the model and wrap every Linear named in cfg.sites inside its blocks. Returns the AlterState
    that steers the adapters (also model.alter_state). Routers live at transformer.h[i].router."""
    for p in model.parameters():
        p.requires_grad_(False)
    state = AlterState()
    for block in model.transformer.h:
        router = Router(model.config.n_embd, cfg.n_total, cfg, state) if cfg.router else None
        if router is not None:
            block.router = router
        first = True
        for parent in (block.attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear) and name in cfg.sites:
                    computes = first and parent is block.attn
                    setattr(parent, name, AsymLoRALinear(child, cfg, router, state, computes))
                    first = False
        assert router is None or not first and any(
            getattr(m, "computes_gates", False) for m in block.attn.modules()), \
            f"the router needs an adapted attention input projection (c_attn or q_proj) in sites {cfg.sites}"
    model.alter_state, model.alter_config = state, cfg
    return state


def adapter_params(model):
    """(name, parameter) of every adapter and router tensor, selected by name."""
    return [(n, p) for n, p in model.named_parameters() if "lora_" in n or ".router." in n]


def trainable_summary(model):
    """Mark adapter parameters trainable and say how many there are."""
    for _, p in adapter_params(model):
        p.requires_grad_(True)
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"parameters: {total / 1e6:.2f}M total, {train / 1e6:.3f}M trainable ({100 * train / total:.2f}%)"


def save_adapter(model, path, extra=None):
    """Adapter and router tensors only, with the AlterConfig (and `extra`) in the header; atomic."""
    meta = {"alter_config": json.dumps(asdict(model.alter_config)), **(extra or {})}
    write_safetensors(path, {n: p.detach().float() for n, p in adapter_params(model)}, meta)


def load_adapter(model, path):
    """Attach adapters as saved in `path` to a base model and load them. Fails naming any mismatch."""
    saved, meta = read_safetensors(path, metadata=True)
    if "alter_config" not in meta:
        raise ValueError(f"{path}: not an adapter file of this project (no alter_config in its header)")
    cfg = json.loads(meta["alter_config"])
    cfg = AlterConfig(**{**cfg, "sites": tuple(cfg["sites"])})
    attach(model, cfg)
    ours = dict(adapter_params(model))
    bad = sorted(set(ours) ^ set(saved)) + [f"{k}: file {tuple(saved[k].shape)} vs model {tuple(ours[k].shape)}"
                                            for k in set(ours) & set(saved) if ours[k].shape != saved[k].shape]
    if bad:
        raise ValueError(f"{path}: adapter does not fit this base model: {bad[:6]}{' ...' if len(bad) > 6 else ''}")
    with torch.no_grad():
        for k, p in ours.items():
            p.copy_(saved[k])
    return cfg, meta

class GatedLM(nn.Module):
    """An adapted model as ALTER runs it at inference. gate="entropy": a base pass (adapters off) gives the
    token entropy S_q, which sets each token's temperature and top-k; then the adapted pass. gate="router":
    the adapted pass alone, dense router softmax (no base pass: cheaper). Works with GPT.generate."""

    def __init__(self, model, q=1.5, theta=1.2, gate="entropy"):
        super().__init__()
        assert gate in ("entropy", "router"), f"gate must be 'entropy' or 'router', got {gate!r}"
        self.model, self.q, self.theta, self.gate = model, q, theta, gate
        self.config = model.config

    def new_cache(self):
        return {"base": self.model.new_cache(), "adapted": self.model.new_cache()}

    def forward(self, idx, attention_mask=None, targets=None, cache=None, position_ids=None):
        st = self.model.alter_state
        if self.gate == "entropy":
            st.set("off")
            base_logits, _ = self.model(idx, attention_mask=attention_mask, cache=cache and cache["base"],
                                        position_ids=position_ids)
            st.set("entropy", high=tsallis(base_logits, self.q) > self.theta)
        else:
            st.set("router")
        return self.model(idx, attention_mask=attention_mask, targets=targets, cache=cache and cache["adapted"],
                          position_ids=position_ids)

    generate = GPT.generate

# -----------------------------------------------------------------------------
# sub-domains: k-means (cosine) on the frozen model's mean-pooled last hidden states


@torch.no_grad()
def cluster(model, examples, n_clusters, pad_id, seed=0, iters=50, device="cpu"):
    """Expert label (1..N) of each forget example. N is capped by the number of examples."""
    feats = []
    for i in range(0, len(examples), 16):
        b = collate(examples[i:i + 16], pad_id, device)
        h = model(b["x"], attention_mask=b["mask"], hidden_only=True).float()  # (B, T, C)
        m = b["mask"][..., None].float()
        feats.append(((h * m).sum(1) / m.sum(1)).cpu())
    X = F.normalize(torch.cat(feats), dim=-1)  # (n, C)
    k = min(n_clusters, len(X))
    g = torch.Generator().manual_seed(seed)
    centers = X[torch.randperm(len(X), generator=g)[:1]]
    while len(centers) < k:  # k-means++ seeding on cosine distance
        d = (1 - X @ centers.T).min(1).values.clamp(min=0)
        nxt = torch.multinomial(d + 1e-12, 1, generator=g) if d.sum() > 0 else torch.randint(len(X), (1,), generator=g)
        centers = torch.cat((centers, X[nxt]))
    for _ in range(iters):
        assign = (X @ centers.T).argmax(1)
        new = torch.stack([F.normalize(X[assign == c].mean(0), dim=0) if (assign == c).any() else centers[c]
                           for c in range(k)])
        if torch.allclose(new, centers):
            break
        centers = new
    return ((X @ centers.T).argmax(1) + 1).tolist()

# -----------------------------------------------------------------------------
# loss terms: each one small function of logits (B, T, V) and targets y (B, T), on a boolean mask (B, T)


def nll(logits, y, where):
    """Mean next-token cross-entropy over the positions in `where`."""
    return F.cross_entropy(logits[where].float(), y[where]) if where.any() else logits.sum() * 0


def ihl(logits, y, where):
    """Inverted hinge loss (Cha et al. 2024, arXiv 2408.06621), mean over `where`:
    IHL_t = 1 + p(y_t) - max_{v != y_t} p(v). Pushes the true token down and the runner-up up."""
    if not where.any():
        return logits.sum() * 0
    p = F.softmax(logits[where].float(), dim=-1)  # (n, V)
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
    logq = F.log_softmax(logits[where].float(), dim=-1).gather(1, top_ids.long())  # (n, k)
    logp = top_logp.float()
    return (logp.exp() * (logp - logq)).sum(1).mean()


def routing_ce(model, labels, where):
    """Cross-entropy of every block's router (temperature 1) against the expert labels, mean over blocks."""
    losses = [F.cross_entropy(b.router.logits[where], labels[where]) for b in model.transformer.h]
    return torch.stack(losses).mean()


def seq_logp(logits, y):
    """Summed log-prob of the labelled tokens of each row: (B,)."""
    logp = -F.cross_entropy(logits.float().flatten(0, 1), y.clamp(min=0).flatten(), reduction="none").view(y.shape)
    return (logp * (y != -100)).sum(1)


def npo(logits, y, ref_logp, rows, beta=0.1):
    """NPO (Zhang et al. 2024), as open-unlearning: (2/beta) * mean log(1 + (pi_theta/pi_ref)^beta) over the
    forget rows, sequence log-probs summed over answer tokens; pi_ref = the target model (precomputed)."""
    ratio = seq_logp(logits, y)[rows] - ref_logp[rows]
    return (2 / beta) * F.softplus(beta * ratio).mean()

def rmu(h, u, h_ref, forget, retain, alpha):
    """RMU (Li et al. 2024, the WMDP paper) on one layer's activations h (B, T, d): forget tokens are pulled to
    the fixed random control vector u (d,), retain tokens to the frozen model's activations h_ref, each a
    squared error averaged over d and then over the tokens in the mask (open-unlearning's masked MSE):
        mean_{t in forget} |h_t - u|^2 / d  +  alpha * mean_{t in retain} |h_t - h_ref_t|^2 / d"""
    mse = lambda a, b, where: ((a[where].float() - b.float()) ** 2).mean() if where.any() else a.sum() * 0
    return mse(h, u, forget), alpha * mse(h, h_ref[retain], retain)


def layer_output(model, layer, x, mask):
    """The output of block `layer` (B, T, d), read by a forward hook during a forward pass."""
    seen = []
    handle = model.transformer.h[layer].register_forward_hook(lambda m, inp, out: seen.append(out))
    try:
        model(x, attention_mask=mask, hidden_only=True)
    finally:
        handle.remove()
    return seen[0]

def rmu_setup(model, forget_ex, pad_id, layer=None, steer=4.0, seed=0, device="cpu"):
    """RMU's pieces: the steered layer (default 7/32 of the depth, the original's layer 7 of 32), a frozen
    copy of the model, the trainable down-projections (the steered layer and the two below, as the original's
    layers 5-7), and the control vector u: uniform in [0, 1)^d, drawn once from the seed, scaled to steer x
    the frozen layer's mean activation norm on (the first 64 windows of) the forget text. A fixed norm (the
    paper's 6.5) does not carry over between models. Leaves only those down-projections trainable."""
    n = model.config.n_layer
    layer = round(n * 7 / 32) if layer is None else layer
    if not 0 <= layer < n:
        raise ValueError(f"--rmu-layer must be in 0..{n - 1}, got {layer}")
    frozen = copy.deepcopy(model).eval()
    for p in list(model.parameters()) + list(frozen.parameters()):
        p.requires_grad_(False)
    down = "c_proj" if model.config.arch == "gpt2" else "down_proj"
    names = [f"transformer.h.{i}.mlp.{down}.weight" for i in range(max(0, layer - 2), layer + 1)]
    params = dict(model.named_parameters())
    for name in names:
        params[name].requires_grad_(True)
    with torch.no_grad():
        batches = (collate(forget_ex[i:i + 16], pad_id, device) for i in range(0, min(64, len(forget_ex)), 16))
        norms = [layer_output(frozen, layer, b["x"], b["mask"])[b["y"] != -100].float().norm(dim=-1) for b in batches]
    u = torch.rand(model.config.n_embd, generator=torch.Generator().manual_seed(seed))
    u = u / u.norm() * steer * torch.cat(norms).mean().item()
    return dict(layer=layer, frozen=frozen, names=names, u=u.to(device))

# -----------------------------------------------------------------------------
# the losses of every method, in one place


def a_loss(parts, phase, w):
    """ALTER's high-entropy terms, the only ones whose gradient the shared A receives: Phase I's NLL (all on
    high-entropy tokens), Phase II's structural KL and the high-entropy share of the retain NLL."""
    return parts["nll_high"] if phase == 1 else w.gamma * parts["retain_high"] + w.lam * parts["struct"]


def backward(model, loss, a_only=None):
    """loss.backward(), except that with `a_only` the shared A accumulates the gradient of a_only alone: one
    autograd.grad for the lora_A tensors, then the backward of the whole loss for every other parameter. The
    price is a second backward pass through the network (measured in the README)."""
    if a_only is None:
        return loss.backward()
    A = [p for n, p in adapter_params(model) if "lora_A" in n and p.requires_grad]
    rest = [p for p in model.parameters() if p.requires_grad and all(p is not a for a in A)]
    gA = torch.autograd.grad(a_only, A, retain_graph=True, allow_unused=True) if a_only.requires_grad else [None] * len(A)
    loss.backward(inputs=rest)
    for p, g in zip(A, gA):
        g = torch.zeros_like(p) if g is None else g
        p.grad = g if p.grad is None else p.grad + g


@dataclass
class LossWeights:
    beta: float = 1.0      # forget term (sum over sub-domains of the mean IHL)
    gamma: float = 1.0     # retain NLL
    lam: float = 0.01      # structural invariance KL
    mu: float = 1.0        # routing cross-entropy
    npo_beta: float = 0.1  # NPO's inverse temperature
    alpha: float = 100.0   # RMU's retain weight


def method_loss(method, phase, model, batch, w):
    """Forward one batch and return (total loss, dict of named parts). The batch holds x, y, mask (B, T),
    expert (B,) with 0 for retain rows and d >= 1 for forget rows of sub-domain d, and per method: high
    (B, T) and top_ids/top_logp (the profile at labelled positions) for ALTER, ref_logp (B,) for NPO.

        alter phase 1: NLL on high-entropy answer tokens of forget and retain rows, gates fixed to B_r
                       (which learns from the retain rows only: isolation by data source)
        alter phase 2: beta * sum_d IHL(low-entropy forget tokens of d) + gamma * NLL(retain)
                       + lam * KL(base || model) on high-entropy answer tokens + mu * routing CE
                       (A learns from `a_loss` alone unless batch["a_grad"] is "position")
        asymlora:      beta * sum_d IHL(all forget answer tokens of d) + gamma * NLL(retain) + mu * routing CE
        ga: -NLL(forget)   gd, lora: -NLL(forget) + gamma * NLL(retain)   npo: NPO(forget) + gamma * NLL(retain)
        rmu:           forget activations of one layer -> u, retain activations -> the frozen model's (batch:
                       rmu_layer, rmu_u, h_ref = the frozen model's activations of the batch)
    """
    x, y, mask, expert = batch["x"], batch["y"], batch["mask"], batch["expert"]
    lab = y != -100
    # every token carries an expert label: the row's expert where the answer is predicted, the retain expert
    # (0) on the prompt, which forget and retain questions share ("Question: Where was ..."): the router
    # cannot tell them apart there, and the question is not what is forgotten
    labels = torch.where(lab, expert[:, None], 0)
    forget = (expert > 0)[:, None] & lab
    retain = (expert == 0)[:, None] & lab
    if method == "rmu":  # at the labelled positions (text: every token)
        h = layer_output(model, batch["rmu_layer"], x, mask)
        parts = dict(zip(("forget_mse", "retain_mse"), rmu(h, batch["rmu_u"], batch["h_ref"], forget, retain, w.alpha)))
        return parts["forget_mse"] + parts["retain_mse"], parts
    state = getattr(model, "alter_state", None)
    if method == "alter":
        high = batch["high"]
        a_live = high if batch.get("a_grad", "exact") == "position" else None  # "exact": see `backward`
        mode = "teacher" if phase == 1 else batch.get("gate", "teacher")  # Phase I: every gate on B_r
        state.set(mode, labels=torch.zeros_like(labels) if phase == 1 else labels, high=high, rows=expert,
                  a_live=a_live)
    elif method == "asymlora":
        state.set("teacher", labels=labels)
    elif state is not None:
        state.set("router")  # plain LoRA: a single expert, no gates
    logits, _ = model(x, attention_mask=mask)
    parts = {}
    if method == "alter" and phase == 1:
        parts["nll_high"] = nll(logits, y, lab & high)
        return parts["nll_high"], parts
    if method in ("alter", "asymlora"):
        low = forget & ~batch["high"] if method == "alter" else forget
        parts["ihl"] = sum((ihl(logits, y, low & (expert == d)[:, None]) for d in expert[expert > 0].unique().tolist()),
                           logits.sum() * 0)
        parts["retain"] = nll(logits, y, retain)
        parts["route"] = routing_ce(model, labels, mask.bool())
        total = w.beta * parts["ihl"] + w.gamma * parts["retain"] + w.mu * parts["route"]
        if method == "alter":
            sel = batch["high"][lab]  # which labelled positions (row-major, as top_ids is stored) are high
            parts["struct"] = struct_kl(logits, batch["top_ids"][sel], batch["top_logp"][sel], lab & batch["high"])
            # the high-entropy share of the retain NLL (its sum over high retain tokens / all retain tokens)
            n = retain.sum().clamp(min=1)
            parts["retain_high"] = nll(logits, y, retain & batch["high"]) * (retain & batch["high"]).sum() / n
            total = total + w.lam * parts["struct"]
        return total, parts
    if method == "npo":
        parts["npo"] = npo(logits, y, batch["ref_logp"], expert > 0, w.npo_beta)
        parts["retain"] = nll(logits, y, retain)
        return parts["npo"] + w.gamma * parts["retain"], parts
    parts["forget_nll"] = nll(logits, y, forget)
    if method == "ga":
        return -parts["forget_nll"], parts
    assert method in ("gd", "lora"), f"unknown method {method!r}"
    parts["retain"] = nll(logits, y, retain)
    return -parts["forget_nll"] + w.gamma * parts["retain"], parts
