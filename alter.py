"""
ALTER: asymmetric LoRA with an entropy-aware router and its hierarchical loss (the loss terms it shares with
its baselines are in losses.py; methods.py puts every method together; RMU's activation steering is in rmu.py).

The paper's update of a frozen weight W0 (its Eq. for W; see README "paper <-> code"):

    W = W0 + (B_r + sum_d w_fd * B_fd) A          one shared A (r x in), experts B (out x r)

Here every adapted nn.Linear computes y = W0 x + (alpha/r) * sum_e g_e * B_e (A x) over E = N+1 experts:
expert 0 is the retain expert B_r, experts 1..N the forget experts B_fd, one per forget sub-domain d. The
gates g come from one router per block (softmax of a Linear on the block's normalised input and its running
mean over the row so far, temperature 0.8 for high-entropy tokens and 0.01 for low-entropy ones). A fresh
adapter is an exact no-op: all B = 0.

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
low-entropy ones; "router" skips the base pass and uses the router's dense softmax; "oracle" (an ablation)
puts each forget question's low-entropy answer tokens on its own sub-domain's expert and everything else on
B_r. `routing.gate_report` says how a gate routed a set of examples (the routing diagnostics of every evaluation).
"""
import json
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from data.batching import batches
from entropy import head_entropy
from losses import forget_ihl, labelled_forward, masks, nll, routing_ce, struct_kl
from checkpoint import read_safetensors, write_safetensors
from model import GPT

# -----------------------------------------------------------------------------
# routing: how one forward pass routes, the router, and the adapted Linear


@dataclass
class Route:
    """How the adapters route one forward pass. mode: "off" (adapters disabled: the frozen base model),
    "teacher" / "soft" (training), "entropy" / "router" (inference). labels (B, T) expert ids ("teacher"),
    high (B, T) high-entropy mask ("soft", "entropy"). Isolation while training: rows (B,) the expert of each
    row's data source, whose B alone is live on that row; a_live (B, T) the positions where A x keeps its
    gradient (the "position" approximation; None: everywhere). mask and prefix feed the routers' running means
    (Router): which tokens count (padding does not), and what the tokens before this pass summed to (decoding
    with a KV cache; GatedLM carries it from step to step). The pass fills, per block index, the router's
    logits (for the routing loss) and the gates that block's adapters share."""
    mode: str = "router"
    labels: torch.Tensor = None
    high: torch.Tensor = None
    rows: torch.Tensor = None
    a_live: torch.Tensor = None
    mask: torch.Tensor = None     # (B, T) the pass's tokens that count in the routers' running means (None: all)
    prefix: dict = None           # block index -> (sum (B, C), count (B, 1)) of the tokens before this pass
    logits: dict = field(default_factory=dict)  # block index -> (B, T, E)
    gates: dict = field(default_factory=dict)   # block index -> (B, T, E)


class Routing:
    """The route of the forward passes of one adapted model, shared by its adapters (model.routing). The code
    that runs a pass says how it routes, for the scope of a `with` block, and reads what the pass left:

        with model.routing(Route("teacher", labels=labels)) as route:
            logits, _ = model(x)
        route.logits[0]   # block 0's router logits of that pass

    Outside any `with` block the adapters route by the router's dense softmax (Route("router"))."""

    def __init__(self):
        self.route = Route()
        self.routers = []  # the blocks' routers, by block index (modules of their blocks, not of this object)

    @contextmanager
    def __call__(self, route):
        before, self.route = self.route, route
        try:
            yield route
        finally:
            self.route = before


@dataclass
class AlterConfig:
    rank: int = 8                 # r, the LoRA rank (paper: 8 for every LoRA variant)
    alpha: float = 16.0           # scaling = alpha / rank
    n_experts: int = 4            # forget experts N; expert 0 is the retain expert, so E = N + 1 B's
    router: bool = True           # False: plain LoRA, a single B and no router
    tau_high: float = 0.8         # router temperature at high-entropy tokens (paper)
    tau_low: float = 0.01         # ... at low-entropy tokens (paper)
    top_k_high: int = 3           # experts kept at high-entropy tokens at inference (paper: top-3)
    router_input: str = "prefix"  # "prefix": the token and the running mean of its row so far; "token": the token
    sites: tuple = ("c_attn", "c_proj", "c_fc", "q_proj", "k_proj", "v_proj", "o_proj",
                    "gate_proj", "up_proj", "down_proj")  # adapted Linears (every one inside the blocks)

    @property
    def n_total(self):
        return self.n_experts + 1 if self.router else 1


class Router(nn.Module):
    """One per block: gates (B, T, E) from the block's normalised input h, shared by the block's adapters. With
    router_input "prefix" (the default) it reads [h_t, mean of h_1..h_t over the row's tokens]: the token, and
    what its row is about so far. A token alone rarely tells whose answer it is part of (README, "where ALTER's
    forgetting comes from"); the running mean carries the question's subject to every answer token."""

    def __init__(self, d_model, cfg, block):
        super().__init__()
        self.proj = nn.Linear(d_model * (2 if cfg.router_input == "prefix" else 1), cfg.n_total)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        self.cfg, self.block = cfg, block

    def running_mean(self, h, route):
        """mean of h over the row's tokens up to each position (B, T, C), in fp32, after those of earlier passes
        (route.prefix, updated for the next one). Left padding (route.mask's zeros before a row's first token)
        does not count; every later token does, also one the attention mask hides (open-unlearning's rule hides
        end-of-turn tokens inside a prompt, which training batches, masked for padding alone, show the router)."""
        w = torch.ones(h.shape[:2], device=h.device) if route.mask is None else (route.mask.cumsum(1) > 0).float()
        total, count = (h.float() * w[..., None]).cumsum(1), w.cumsum(1)[..., None]
        if route.prefix is not None:
            if self.block in route.prefix:
                s0, n0 = route.prefix[self.block]
                total, count = total + s0[:, None], count + n0[:, None]
            route.prefix[self.block] = (total[:, -1], count[:, -1])
        return (total / count.clamp(min=1)).to(h.dtype)

    def forward(self, h, route):
        """Gates for this block under `route`; its logits are left in route.logits[block] for the loss."""
        cfg = self.cfg
        if cfg.router_input == "prefix":
            h = torch.cat((h, self.running_mean(h, route)), dim=-1)
        logits = route.logits[self.block] = self.proj(h).float()  # (B, T, E)
        E = logits.size(-1)
        if route.mode == "teacher":
            return F.one_hot(route.labels, E).float()
        if route.mode == "router":
            return F.softmax(logits, dim=-1)
        # "soft" (training) or "entropy" (inference): entropy-aware temperature, the paper's gate
        tau = torch.where(route.high, cfg.tau_high, cfg.tau_low)[..., None]  # (B, T, 1)
        g = F.softmax(logits / tau, dim=-1)
        if route.mode == "entropy":  # sparse routing: top-3 at high-entropy tokens, top-1 at low ones
            k = torch.where(route.high, min(cfg.top_k_high, E), 1)[..., None]  # (B, T, 1)
            rank = g.argsort(dim=-1, descending=True).argsort(dim=-1)  # rank of each expert, 0 = best
            g = torch.where(rank < k, g, 0.0)
            g = g / g.sum(-1, keepdim=True)
        return g


class AsymLoRALinear(nn.Module):
    """A frozen nn.Linear plus shared lora_A (r, in) and experts lora_B (E, out, r), mixed by router gates."""

    def __init__(self, base, cfg, routing, block, runs_router):
        super().__init__()
        self.base, self.routing, self.block = base, routing, block
        self.runs_router = runs_router  # the block's first adapter sees ln_1(x), the router's input
        self.scaling = cfg.alpha / cfg.rank
        self.lora_A = nn.Parameter(torch.empty(cfg.rank, base.in_features))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and loralib) initialise A
        self.lora_B = nn.Parameter(torch.zeros(cfg.n_total, base.out_features, cfg.rank))  # B = 0: a no-op at start

    def forward(self, x):
        route = self.routing.route  # this pass's route: set by `with model.routing(Route(...))`
        if route.mode == "off":
            return self.base(x)
        if torch.is_autocast_enabled(x.device.type):  # cast once here, not once by each of the matmuls below
            x = x.to(torch.get_autocast_dtype(x.device.type))
        y = self.base(x)
        h = F.linear(x, self.lora_A)  # (B, T, r)
        if route.a_live is not None:  # "position" isolation of A: no gradient through low-entropy positions
            h = torch.where(route.a_live[..., None], h, h.detach())
        E, out, r = self.lora_B.shape
        if not self.routing.routers:  # plain LoRA
            return y.add_(F.linear(h, self.lora_B[0] * self.scaling))
        if self.runs_router:  # the block's gates for this pass, which its later adapters read
            route.gates[self.block] = self.routing.routers[self.block](x, route)
        g = route.gates[self.block]  # (B, T, E)
        z = (g.to(h.dtype)[..., None] * h[..., None, :]).flatten(-2)  # (B, T, E*r): each expert's gated input
        Bflat = (self.lora_B * self.scaling).permute(0, 2, 1).reshape(E * r, out)  # all experts in one matmul
        if route.rows is None:
            return y.add_(z @ Bflat.to(z.dtype))  # (B, T, out)
        # isolation by data source: on each row only the row's own expert's B is trained
        own = F.one_hot(route.rows, E).repeat_interleave(r, dim=1)[:, None, :]  # (B, 1, E*r)
        return y.add_(OwnExperts.apply(z, Bflat, own))


class OwnExperts(torch.autograd.Function):
    """z @ B (z: (B, T, E*r) gated inputs, B: (E*r, out) the experts' B), where B's gradient comes from each
    row's own expert alone: dB = (z * own)^T dy, own (B, 1, E*r) 0/1; z's gradient is the usual dy B^T. The
    same as z_own @ B + z_other @ B.detach(), in one matmul forward and two backward."""

    @staticmethod
    def forward(ctx, z, B, own):
        ctx.save_for_backward(z, B, own)
        return z @ B.to(z.dtype)

    @staticmethod
    def backward(ctx, dy):
        z, B, own = ctx.saved_tensors
        dz = dy @ B.to(dy.dtype).t() if ctx.needs_input_grad[0] else None
        dB = ((z * own.to(z.dtype)).flatten(0, 1).t() @ dy.to(z.dtype).flatten(0, 1)).to(B.dtype) \
            if ctx.needs_input_grad[1] else None
        return dz, dB, None

# -----------------------------------------------------------------------------
# attaching, trainable parameters, saving and loading


def attach(model, cfg):
    """Freeze the model and wrap every Linear named in cfg.sites inside its blocks. Sets model.routing (the
    `Routing` its adapters share) and model.alter_config. Routers live at transformer.h[i].router."""
    for p in model.parameters():
        p.requires_grad_(False)
    routing = Routing()
    for i, block in enumerate(model.transformer.h):
        if cfg.router:
            block.router = Router(model.config.n_embd, cfg, i)
            routing.routers.append(block.router)
        first = True
        for parent in (block.attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear) and name in cfg.sites:
                    setattr(parent, name, AsymLoRALinear(child, cfg, routing, i, first and parent is block.attn))
                    first = False
        assert not cfg.router or any(getattr(m, "runs_router", False) for m in block.attn.modules()), \
            f"the router needs an adapted attention input projection (c_attn or q_proj) in sites {cfg.sites}"
    model.routing, model.alter_config = routing, cfg
    return routing


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


def adapter_file(path):
    """An adapter's .safetensors file, given the file or its run folder."""
    return path if path.endswith(".safetensors") else os.path.join(path, "adapter.safetensors")


def adapter_header(path):
    """The run settings train.py wrote into an adapter's header (train.save_product; {} if none). path: the
    .safetensors file or its run folder."""
    return json.loads(read_safetensors(adapter_file(path), metadata=True)[1].get("run", "{}"))


def load_adapter(model, path):
    """Attach adapters as saved in `path` to a base model and load them. Fails naming any mismatch."""
    saved, meta = read_safetensors(path, metadata=True)
    if "alter_config" not in meta:
        raise ValueError(f"{path}: not an adapter file of this project (no alter_config in its header)")
    cfg = json.loads(meta["alter_config"])
    cfg = AlterConfig(**{"router_input": "token", **cfg, "sites": tuple(cfg["sites"])})  # files from before "prefix"
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
    the adapted pass alone, dense router softmax (no base pass: cheaper). gate="oracle" (an ablation): a row
    that holds a forget question takes that question's sub-domain expert at its low-entropy answer tokens and
    B_r everywhere else; every other row B_r. `experts` {prompt ids (tuple): expert 1..N} of the forget
    questions (the run's sub-domains) tells the oracle, and the routing diagnostics, which rows are which.
    After each pass, `route` holds that pass's gates (per block) and high-entropy mask. Works with GPT.generate."""

    GATES = ("entropy", "router", "oracle")

    @classmethod
    def from_header(cls, model, run):
        """As an adapter's run header (adapter_header) says: its q, theta, gate and forget questions' experts."""
        return cls(model, run["q"], run["theta"], run["gate"], {tuple(p): d for p, d in run.get("experts", [])})

    def __init__(self, model, q=1.5, theta=1.2, gate="entropy", experts=None):
        super().__init__()
        assert gate in self.GATES, f"gate must be one of {self.GATES}, got {gate!r}"
        if gate == "oracle" and not experts:
            raise ValueError("the oracle gate needs the sub-domains of the forget questions (an adapter saved by a "
                             "question-answer run of train.py)")
        self.model, self.q, self.theta, self.gate = model, q, theta, gate
        self.experts = experts or {}
        self.prompt_lengths = sorted({len(k) for k in self.experts}, reverse=True)
        self.config, self.route = model.config, None

    def new_cache(self):
        return {"base": self.model.new_cache(), "adapted": self.model.new_cache(), "rows": None, "prefix": {}}

    def high_entropy(self, idx, attention_mask=None, cache=None, position_ids=None):
        """The base pass (adapters off): (B, T) True where S_q of the next-token distribution exceeds theta."""
        with self.model.routing(Route("off")):
            h = self.model(idx, attention_mask=attention_mask, cache=cache and cache["base"],
                           position_ids=position_ids, hidden_only=True)
        return head_entropy(self.model.lm_head, h, self.q) > self.theta  # a chunk of positions at a time

    def expert_of(self, ids, n_prompt):
        """The sub-domain expert of a forget question's example (its prompt ids[:n_prompt]), else None."""
        return self.experts.get(tuple(ids[:n_prompt]))

    def oracle_labels(self, idx, high, cache):
        """(B, T) expert ids of the oracle gate. A scored row (no cache) starts with its prompt, whose last
        token predicts the first answer token; a generated row is a left-padded prompt (the prefill: its last
        position predicts) and then one new position per step, all of them answer positions."""
        B, T = idx.shape
        if cache is not None and cache["rows"] is not None:  # a decoding step: the rows found at the prefill
            return torch.where(high, 0, cache["rows"][:, None])
        rows, start = torch.zeros(B, dtype=torch.long), torch.full((B,), T)
        for b, ids in enumerate(idx.tolist()):
            for n in self.prompt_lengths:  # the longest prompt first
                d = self.experts.get(tuple(ids[-n:] if cache is not None else ids[:n]))
                if d is not None:
                    rows[b], start[b] = d, T - 1 if cache is not None else n - 1
                    break
        rows, start = rows.to(idx.device), start.to(idx.device)
        if cache is not None:
            cache["rows"] = rows
        answer = torch.arange(T, device=idx.device)[None] >= start[:, None]
        return torch.where(answer & ~high, rows[:, None], 0)

    def forward(self, idx, attention_mask=None, targets=None, cache=None, position_ids=None, keep=None):
        route = Route("router")
        if self.gate != "router":
            high = self.high_entropy(idx, attention_mask, cache, position_ids)
            route = Route("entropy", high=high) if self.gate == "entropy" else \
                Route("teacher", labels=self.oracle_labels(idx, high, cache), high=high)
        # the routers' running means: this pass's tokens (a cache's mask covers earlier ones too), and the sums
        # of the earlier passes
        route.mask = None if attention_mask is None else attention_mask[:, -idx.size(1):].bool()
        route.prefix = cache and cache["prefix"]
        with self.model.routing(route):
            out = self.model(idx, attention_mask=attention_mask, targets=targets, cache=cache and cache["adapted"],
                             position_ids=position_ids, keep=keep)
        self.route = route
        return out

    generate = GPT.generate


# -----------------------------------------------------------------------------
# sub-domains: k-means (cosine) on the frozen model's mean-pooled last hidden states


@torch.no_grad()
def cluster(model, examples, n_clusters, pad_id, seed=0, iters=50, device="cpu"):
    """Expert label (1..N) of each forget example. N is capped by the number of examples."""
    feats = []
    for b in batches(examples, pad_id, device):
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
# ALTER's loss, and the gradient its shared A receives


def alter_loss(model, batch, phase, hp):
    """One batch through the adapted model; returns (total loss, dict of named parts). The batch holds x, y,
    mask (B, T), expert (B,) (0: retain row, d >= 1: forget row of sub-domain d), high (B, T), top_ids and
    top_logp (the base model's profile at the labelled positions), gate and a_grad (the flags).

        phase 1: NLL on high-entropy answer tokens of forget and retain rows, gates fixed to B_r
                 (which learns from the retain rows only: isolation by data source)
        phase 2: beta * sum_d IHL(low-entropy forget tokens of d) + gamma * NLL(retain)
                 + lam * KL(base || model) on high-entropy answer tokens + mu * routing CE
                 (A learns from `a_loss` alone unless batch["a_grad"] is "position")"""
    mask, expert, high = batch["mask"], batch["expert"], batch["high"]
    forget, retain, labels = masks(batch)
    a_live = high if batch.get("a_grad", "exact") == "position" else None  # "exact": see `backward`
    if phase == 1:  # every gate on B_r
        route = Route("teacher", labels=torch.zeros_like(labels), high=high, rows=expert, a_live=a_live, mask=mask)
    else:
        route = Route(batch.get("gate", "teacher"), labels=labels, high=high, rows=expert, a_live=a_live, mask=mask)
    with model.routing(route):
        logits, lab, y = labelled_forward(model, batch)  # logits (n, V); the masks below are taken at lab
    high, forget, retain = high[lab], forget[lab], retain[lab]
    if phase == 1:
        parts = {"nll_high": nll(logits, y, high)}
        return parts["nll_high"], parts
    # top_ids/top_logp are stored for the labelled positions in the same row-major order
    parts = {"ihl": forget_ihl(logits, y, forget & ~high, labels[lab]), "retain": nll(logits, y, retain),
             "route": routing_ce(route, labels, mask.bool()),  # the routers' logits: every (B, T) position
             "struct": struct_kl(logits, batch["top_ids"][high], batch["top_logp"][high], high),
             # the high-entropy share of the retain NLL (its sum over high retain tokens / all retain tokens)
             "retain_high": nll(logits, y, retain & high) * (retain & high).sum() / retain.sum().clamp(min=1)}
    total = hp.beta * parts["ihl"] + hp.gamma * parts["retain"] + hp.mu * parts["route"] + hp.lam * parts["struct"]
    return total, parts


def a_loss(parts, phase, hp):
    """ALTER's high-entropy terms, the only ones whose gradient the shared A receives: Phase I's NLL (all on
    high-entropy tokens), Phase II's structural KL and the high-entropy share of the retain NLL."""
    return parts["nll_high"] if phase == 1 else hp.gamma * parts["retain_high"] + hp.lam * parts["struct"]


def backward(model, loss, a_only=None):
    """loss.backward(), except that with `a_only` the shared A accumulates the gradient of a_only alone: one
    autograd.grad for the lora_A tensors, then the backward of the whole loss for every other parameter. The
    price is a second backward pass through the network (measured in the README)."""
    if a_only is None:
        return loss.backward()
    A = [p for n, p in adapter_params(model) if "lora_A" in n and p.requires_grad]
    rest = [p for p in model.parameters() if p.requires_grad and all(p is not a for a in A)]
    gA = torch.autograd.grad(a_only, A, retain_graph=True, allow_unused=True) if a_only.requires_grad \
        else [None] * len(A)
    loss.backward(inputs=rest)
    for p, g in zip(A, gA):
        g = torch.zeros_like(p) if g is None else g
        p.grad = g if p.grad is None else p.grad + g
