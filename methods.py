"""
Every unlearning method in one table, METHODS. An entry says all that makes the method what it is:

    loss(model, batch, phase, hp)         -> (total loss, {name: part}); hp holds the flags (train.py: args)
    prepare(model, data, args, device, log) -> run: what the method keeps for the run. It runs once, on the
                                           target model before any training: precomputations (ALTER's entropy
                                           profile, NPO's reference log-probs), adapters, which parameters train
    add_to_batch(batch, run, fidx, ridx)  -> puts in the batch what the loss reads beyond x, y, mask, expert
    backward(model, loss, parts, phase, hp) -> the gradients (default: loss.backward())
    groups(model, phase, args)            -> the optimizer's parameter groups, each with its learning rate
    phases(args)                          -> [(phase, epochs), ...]: ALTER runs Phase I then Phase II
    check(args)                           -> what is wrong with the request, before any work (or None)
    flags                                 -> the method's own command-line flags (Flag below)

`run` may hold "expert" (the sub-domain 1..N of each forget example; default 1), "experts" (the same by
question, experts_by_prompt), "theta" (the entropy threshold used) and "gate" (how evaluation routes the
adapters; absent: the model is evaluated as it is).
train.py, bench.py, experiments/collect.py and the tests read METHODS; a new method is one entry here
(README, "Adding a method").
"""
import json
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F

from alter import AlterConfig, Route, a_loss, adapter_params, alter_loss, attach, backward, cluster, trainable_summary
from losses import forget_ihl, labelled_forward, masks, nll, routing_ce, seq_logp
from checkpoint import resolve_checkpoint
from data.forget_sets import TEXT_FORGETS
from data.batching import batches
from entropy import pad_profile, profile, threshold
from model import TINY
from rmu import layer_output, rmu_loss, rmu_setup

# -----------------------------------------------------------------------------
# flags: every command-line flag of train.py is one of these, so that its valid range is checked in one place


@dataclass(frozen=True)
class Flag:
    name: str                    # "--npo-beta"; the value is args.npo_beta
    type: Callable = float
    default: object = None       # None: unset (the benchmark's default fills it, train.DEFAULTS)
    help: str = ""
    at_least: float = None       # valid values: >= at_least, or
    positive: bool = False       # > 0 (also refuses nan), or
    between: tuple = None        # strictly between two values
    choices: tuple = None
    switch: bool = False         # a flag without a value (store_true)

    @property
    def dest(self):
        return self.name[2:].replace("-", "_")

    def add_to(self, parser):
        if self.switch:
            return parser.add_argument(self.name, action="store_true", help=self.help)
        shown = self.help + (f" (default {self.default})" if self.default not in (None, "") else "")
        parser.add_argument(self.name, type=self.type, default=self.default, choices=self.choices, help=shown)

    def problem(self, v):
        """Why value v is not valid for this flag, or None."""
        if v is None or isinstance(v, (bool, str)):
            return None
        if self.at_least is not None and v < self.at_least:
            return f"{self.name} must be at least {self.at_least}, got {v}"
        if self.positive and not v > 0:
            return f"{self.name} must be greater than 0, got {v}"
        if self.between and not self.between[0] < v < self.between[1]:
            return f"{self.name} must be between {self.between[0]} and {self.between[1]}, got {v}"
        return None


# shared by several methods: the weight of the retain term, and the adapters
GAMMA = Flag("--gamma", default=1.0, at_least=0, help="weight of the retain NLL term")
LORA = (Flag("--rank", int, 8, "LoRA rank r", at_least=1),
        Flag("--alpha", float, 16.0, "LoRA alpha (scaling alpha / r)", positive=True),
        Flag("--lr-b", help="learning rate of the B experts (and of A, but in ALTER's Phase II)", positive=True))
EXPERTS = (Flag("--n-experts", int, 4, "forget experts N (sub-domains), capped by the forget-set size", at_least=1),
           Flag("--lr-router", default=1e-2, positive=True, help="learning rate of the routers"),
           Flag("--router-input", str, "prefix", "what each block's router reads: prefix (the token and the running "
                "mean of its row so far) or token (the token alone)", choices=("prefix", "token")),
           Flag("--beta", default=1.0, at_least=0, help="weight of the forget (IHL) term"),
           Flag("--mu", default=1.0, at_least=0, help="weight of the routing cross-entropy"))
FULL = (Flag("--lr", help="learning rate of full-parameter methods", positive=True),)


@dataclass
class UnlearningData:
    forget: list   # (ids, n_prompt) examples to forget
    retain: list   # (ids, n_prompt) examples to keep
    pad_id: int


@dataclass(frozen=True)
class Method:
    about: str
    loss: Callable
    prepare: Callable
    groups: Callable
    add_to_batch: Callable = lambda batch, run, fidx, ridx: None
    backward: Callable = lambda model, loss, parts, phase, hp: loss.backward()
    phases: Callable = lambda args: [(2, args.epochs)]
    check: Callable = lambda args: None
    flags: tuple = field(default=())

# -----------------------------------------------------------------------------
# parameters and learning rates


def train_everything(model, data, args, device, log):
    """Full fine-tuning: every parameter trains (at --lr, `full_groups`)."""
    for p in model.parameters():
        p.requires_grad_(True)
    log(f"parameters: {model.num_params() / 1e6:.2f}M, all trainable (full fine-tuning)")
    return {}


def full_groups(model, phase, args):
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": args.lr}]


def adapter_groups(model, phase, args, lr_a=None):
    """The shared A (at lr_a, default --lr-b), the B experts (at --lr-b) and the routers (at --lr-router)."""
    named = adapter_params(model)
    groups = [{"params": [p for n, p in named if "lora_A" in n], "lr": lr_a or args.lr_b},
              {"params": [p for n, p in named if "lora_B" in n], "lr": args.lr_b},
              {"params": [p for n, p in named if ".router." in n], "lr": args.lr_router}]
    return [g for g in groups if g["params"]]


def alter_groups(model, phase, args):
    """ALTER's Phase II moves A slowly (--lr-a, the paper's 1e-5); in Phase I A learns the structure at the
    experts' rate (--lr-b), as plain LoRA and AsymLoRA train A and B alike."""
    return adapter_groups(model, phase, args, args.lr_a if phase == 2 else None)


def add_adapters(model, args, log, n_experts, router):
    attach(model, AlterConfig(rank=args.rank, alpha=args.alpha, n_experts=n_experts, router=router,
                              tau_high=args.tau_high, tau_low=args.tau_low, top_k_high=args.top_k_high,
                              router_input=args.router_input))
    log(trainable_summary(model))

# -----------------------------------------------------------------------------
# ALTER, AsymLoRA (ALTER without entropy), plain LoRA


def sub_domains(model, data, args, device, log):
    expert = cluster(model, data.forget, args.n_experts, data.pad_id, args.seed, device=device)
    log(f"sub-domains: {max(expert)} forget experts, sizes {[expert.count(d) for d in range(1, max(expert) + 1)]}")
    return expert


def experts_by_prompt(data, expert):
    """{prompt ids: sub-domain expert} of the forget questions (none for text windows, which have no prompt):
    what the oracle gate and the routing diagnostics use to tell a forget question's rows (alter.GatedLM)."""
    return {tuple(ids[:n]): d for (ids, n), d in zip(data.forget, expert) if n > 0}


def alter_prepare(model, data, args, device, log):
    """The frozen model's token entropy on every example (and its top-k, for the structural KL), the threshold,
    the sub-domains, then the adapters."""
    prof = profile(model, data.forget + data.retain, args.q, data.pad_id, args.eval_batch_size, args.cache,
                   device=device)
    ans_H = torch.cat([p["H"][max(n - 1, 0):] for p, (ids, n) in zip(prof, data.forget + data.retain)])
    theta, frac, note = threshold(ans_H, args.theta, args.theta_quantile)
    log(f"entropy: S_{args.q} of {len(ans_H)} answer tokens, theta {theta:.3f} ({note}): "
        f"{frac:.1%} high, {1 - frac:.1%} low")
    expert = sub_domains(model, data, args, device, log)
    add_adapters(model, args, log, max(expert), router=True)
    return dict(prof=prof, theta=theta, expert=expert, gate=args.gate, n_forget=len(data.forget),
                train_gate=args.train_gate, a_grad=args.a_grad, experts=experts_by_prompt(data, expert))


def alter_check(args):
    if args.gate == "oracle" and args.forget in TEXT_FORGETS:
        return f"--gate oracle needs forget questions (their sub-domains); {args.forget} forgets text"
    return None


def alter_batch(batch, run, fidx, ridx):
    """Each token's high/low mark and the base model's top-k where the answer is predicted; the flags."""
    items = [run["prof"][i] for i in fidx] + [run["prof"][run["n_forget"] + i] for i in ridx]
    device = batch["x"].device
    batch["high"] = (pad_profile(items, "H", batch["x"].size(1)) > run["theta"]).to(device)
    batch["top_ids"] = torch.cat([it["top_ids"] for it in items]).to(device)
    batch["top_logp"] = torch.cat([it["top_logp"] for it in items]).to(device)
    batch["gate"], batch["a_grad"] = run["train_gate"], run["a_grad"]


def alter_backward(model, loss, parts, phase, hp):
    """Phase II: A's gradient from the high-entropy terms alone (--a-grad exact; Phase I's loss is all of them)."""
    backward(model, loss, a_loss(parts, phase, hp) if phase == 2 and hp.a_grad == "exact" else None)


def asymlora_prepare(model, data, args, device, log):
    expert = sub_domains(model, data, args, device, log)
    add_adapters(model, args, log, max(expert), router=True)
    return dict(expert=expert, gate="router", experts=experts_by_prompt(data, expert))


def asymlora_loss(model, batch, phase, hp):
    """ALTER without entropy: beta * sum_d IHL(every forget answer token of d) + gamma * NLL(retain)
    + mu * routing CE, teacher-forced gates."""
    forget, retain, labels = masks(batch)
    with model.routing(Route("teacher", labels=labels, mask=batch["mask"])) as route:
        logits, lab, y = labelled_forward(model, batch)
    parts = {"ihl": forget_ihl(logits, y, forget[lab], labels[lab]), "retain": nll(logits, y, retain[lab]),
             "route": routing_ce(route, labels, batch["mask"].bool())}
    return hp.beta * parts["ihl"] + hp.gamma * parts["retain"] + hp.mu * parts["route"], parts


def lora_prepare(model, data, args, device, log):
    add_adapters(model, args, log, 1, router=False)
    return dict(gate="router")

# -----------------------------------------------------------------------------
# full-parameter baselines


def grad_diff(model, batch, phase, hp):
    """-NLL(forget) + gamma * NLL(retain) (GradDiff; also plain LoRA's loss)."""
    logits, lab, y = labelled_forward(model, batch)
    forget, retain, _ = masks(batch)
    parts = {"forget_nll": nll(logits, y, forget[lab]), "retain": nll(logits, y, retain[lab])}
    return -parts["forget_nll"] + hp.gamma * parts["retain"], parts


def grad_ascent(model, batch, phase, hp):
    """-NLL(forget)."""
    logits, lab, y = labelled_forward(model, batch)
    forget, _, _ = masks(batch)
    parts = {"forget_nll": nll(logits, y, forget[lab])}
    return -parts["forget_nll"], parts


def npo_prepare(model, data, args, device, log):
    """The reference is the target itself: its sequence log-prob of every forget example, once."""
    with torch.no_grad():
        ref = torch.cat([seq_logp(model(b["x"], attention_mask=b["mask"])[0], b["y"]).cpu()
                         for b in batches(data.forget, data.pad_id, device)])
    return {**train_everything(model, data, args, device, log), "ref": ref}


def npo_batch(batch, run, fidx, ridx):
    batch["ref_logp"] = torch.cat([run["ref"][fidx], torch.zeros(len(ridx))]).to(batch["x"].device)


def npo(logits, y, ref_logp, rows, beta=0.1):
    """NPO (Zhang et al. 2024), as open-unlearning: (2/beta) * mean log(1 + (pi_theta/pi_ref)^beta) over the
    forget rows, sequence log-probs summed over answer tokens; pi_ref = the target model (precomputed)."""
    ratio = seq_logp(logits, y)[rows] - ref_logp[rows]
    return (2 / beta) * F.softplus(beta * ratio).mean()


def npo_loss(model, batch, phase, hp):
    """NPO on the forget rows + gamma * NLL(retain)."""
    logits, _ = model(batch["x"], attention_mask=batch["mask"])
    _, retain, _ = masks(batch)
    parts = {"npo": npo(logits, batch["y"], batch["ref_logp"], batch["expert"] > 0, hp.npo_beta),
             "retain": nll(logits, batch["y"], retain)}
    return parts["npo"] + hp.gamma * parts["retain"], parts


def simnpo_loss(model, batch, phase, hp):
    """SimNPO (Fan et al. 2024, arXiv 2410.07163), as open-unlearning: NPO without a reference model, on the
    length-normalised NLL: -(2/beta) * mean log sigmoid(beta * (NLL_sum/|y| - delta)) over the forget rows,
    weighted by --simnpo-weight (open-unlearning's gamma); + gamma * NLL(retain) (its alpha)."""
    logits, _ = model(batch["x"], attention_mask=batch["mask"])
    _, retain, _ = masks(batch)
    rows = batch["expert"] > 0
    lab = (batch["y"] != -100)[rows]
    mean_nll = -seq_logp(logits, batch["y"])[rows] / lab.sum(-1).clamp(min=1)
    parts = {"simnpo": -(2 / hp.simnpo_beta) * F.logsigmoid(hp.simnpo_beta * (mean_nll - hp.simnpo_delta)).mean(),
             "retain": nll(logits, batch["y"], retain)}
    return hp.simnpo_weight * parts["simnpo"] + hp.gamma * parts["retain"], parts


def rmu_prepare(model, data, args, device, log):
    r = rmu_setup(model, data.forget, data.pad_id, args.rmu_layer, args.rmu_steer, args.seed, device)
    log(f"RMU: layer {r['layer']}, |u| = {r['u'].norm():.2f}, trains {', '.join(r['names'])}")
    return r


def rmu_check(args):
    """The steered layer exists: the depth is read from the checkpoint's config, without loading weights."""
    if args.rmu_layer is None:
        return None
    if args.target or args.model != "tiny":
        hf = json.load(open(os.path.join(resolve_checkpoint(args.target or args.model), "config.json")))
        n_layer = hf.get("num_hidden_layers", hf.get("n_layer"))
    else:
        n_layer = TINY["n_layer"]
    if n_layer is not None and args.rmu_layer >= n_layer:
        return f"--rmu-layer must be in 0..{n_layer - 1} for this model, got {args.rmu_layer}"
    return None


def rmu_batch(batch, run, fidx, ridx):
    with torch.no_grad():
        batch["h_ref"] = layer_output(run["frozen"], run["layer"], batch["x"], batch["mask"])
    batch.update(rmu_layer=run["layer"], rmu_u=run["u"])

# -----------------------------------------------------------------------------
# the table


METHODS = {
    "alter": Method(
        "ALTER: entropy-gated asymmetric LoRA, Phase I then Phase II", alter_loss, alter_prepare, alter_groups,
        add_to_batch=alter_batch, backward=alter_backward, check=alter_check,
        phases=lambda args: [(1, 0 if args.no_phase1 else args.phase1_epochs), (2, args.epochs)],
        flags=(Flag("--q", default=1.5, positive=True, help="Tsallis entropy index q (1 = Shannon)"),
               Flag("--theta", default=1.2, help="entropy threshold: token is high-entropy if S_q > theta"),
               Flag("--theta-quantile", help="use this quantile of answer-token entropies as theta", between=(0, 1)),
               Flag("--tau-high", default=0.8, positive=True, help="router temperature at high-entropy tokens"),
               Flag("--tau-low", default=0.01, positive=True, help="router temperature at low-entropy tokens"),
               Flag("--top-k-high", int, 3, "experts kept at high-entropy tokens at inference", at_least=1),
               Flag("--train-gate", str, "teacher", "gates while training: labels or the router's",
                    choices=("teacher", "soft")),
               Flag("--gate", str, "entropy", "routing at inference (oracle: each forget question's own sub-domain "
                    "expert at its low-entropy tokens, B_r elsewhere; an ablation)",
                    choices=("entropy", "router", "oracle")),
               Flag("--lam", default=0.01, at_least=0, help="weight of the structural-invariance KL term"),
               Flag("--lr-a", help="Phase II learning rate of the shared A", positive=True),
               Flag("--phase1-epochs", int, 1, "ALTER Phase I epochs", at_least=0),
               Flag("--no-phase1", switch=True, help="skip Phase I (ablation)"),
               Flag("--a-grad", str, "exact", "isolation of the shared A: exact (gradient of the high-entropy "
                    "terms alone) or position (detached at low-entropy tokens)", choices=("exact", "position")))
        + EXPERTS + (GAMMA,) + LORA),
    "asymlora": Method("AsymLoRA: experts and router without entropy (IHL on every forget token)", asymlora_loss,
                       asymlora_prepare, adapter_groups, flags=EXPERTS + (GAMMA,) + LORA),
    "lora": Method("plain LoRA, GradDiff loss", grad_diff, lora_prepare, adapter_groups, flags=(GAMMA,) + LORA),
    "npo": Method("NPO, full fine-tuning", npo_loss, npo_prepare, full_groups, add_to_batch=npo_batch,
                  flags=(Flag("--npo-beta", default=0.1, positive=True, help="NPO's inverse temperature beta"),
                         GAMMA) + FULL),
    "simnpo": Method("SimNPO: reference-free, length-normalised NPO; full fine-tuning", simnpo_loss, train_everything,
                     full_groups,
                     flags=(Flag("--simnpo-beta", default=4.5, positive=True, help="SimNPO's inverse temperature"),
                            Flag("--simnpo-delta", default=0.0, help="SimNPO's margin delta"),
                            Flag("--simnpo-weight", default=0.125, at_least=0, help="weight of the SimNPO term"),
                            GAMMA) + FULL),
    "gd": Method("GradDiff, full fine-tuning", grad_diff, train_everything, full_groups, flags=(GAMMA,) + FULL),
    "ga": Method("gradient ascent, full fine-tuning", grad_ascent, train_everything, full_groups, flags=FULL),
    "rmu": Method(
        "RMU: steers one layer's activations (rmu.py)", rmu_loss, rmu_prepare,
        lambda model, phase, args: [{"params": [p for p in model.parameters() if p.requires_grad], "lr": args.rmu_lr}],
        add_to_batch=rmu_batch, check=rmu_check,
        flags=(Flag("--rmu-layer", int, help="the steered layer (default: 7/32 of the depth); the "
                    "down-projections of it and the two layers below train", at_least=0),
               Flag("--rmu-steer", default=4.0, positive=True, help="norm of the control vector, in units of the "
                    "layer's mean activation norm on the forget text"),
               Flag("--rmu-alpha", at_least=0, help="weight of the retain term (paper: 100; toy: 10)"),
               Flag("--rmu-lr", positive=True, help="learning rate (the paper's 5e-5 at 7B)"))),
}


def method_flags():
    """Every method's flags, each once, in table order: {dest: Flag}."""
    return {f.dest: f for m in METHODS.values() for f in m.flags}


def hparams(**overrides):
    """The flags' defaults as an object with attributes (what train.py passes as hp), with overrides: for
    calling a method's loss outside train.py (tests, bench.py)."""
    return SimpleNamespace(**{**{k: f.default for k, f in method_flags().items()}, **overrides})


def method_loss(method, phase, model, batch, hp):
    """The loss of METHODS[method] on one batch: (total, {name: part})."""
    return METHODS[method].loss(model, batch, phase, hp)
