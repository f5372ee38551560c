"""
One command from a base model to an evaluated unlearned model.

    python train.py --forget toy_forget10 --model tiny                 # offline toy benchmark, CPU, minutes
    python train.py --forget tofu_forget10 --model gpt2 --method npo   # real TOFU (hub, or --data-dir)
    python train.py --forget toy_text --model tiny --method rmu        # text unlearning, offline (WMDP/MUSE-like)
    python train.py --forget wmdp_cyber --model HuggingFaceTB/SmolLM2-135M-Instruct   # WMDP: corpora, MC, MMLU
    torchrun --nproc_per_node=2 train.py --forget toy_forget10 --model tiny   # data parallel (gloo on CPU)

The run, in order:
  1. target model: --target, else --model fine-tuned on the benchmark's full training data (cached in out/cache);
     WMDP: the base model itself
  2. retain reference: --retain-model / --retain-logs, else --model fine-tuned on the retain data (cached);
     WMDP: none, and MUSE: none when --target is given (MUSE's retrained model goes in --retain-model)
  3. unlearning: ALTER (entropy profile, sub-domain clustering, Phase I, Phase II) or a baseline;
     the adapter (or model) and a resumable checkpoint are saved after every epoch
  4. evaluation: target, retain and unlearned side by side; metrics.json in the run folder
"""
import argparse
import hashlib
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

# -----------------------------------------------------------------------------
# knobs
parser = argparse.ArgumentParser(description="ALTER unlearning (and baselines), end to end")
# --- what to forget, and from which model
parser.add_argument("--forget", default="toy_forget10", help="what to forget: toy_forget01|05|10, tofu_forget01|05|10 "
                    "(question-answer pairs), toy_text, wmdp_bio|cyber, muse_news|books (text)")
parser.add_argument("--model", default="tiny", help="'tiny' (from scratch, toy only), a HF hub id or a checkpoint dir")
parser.add_argument("--target", default=None, help="target model (hub id or dir); default: fine-tune --model on the full data")
parser.add_argument("--retain-model", default=None, help="retain reference model; default: fine-tune --model on the retain data")
parser.add_argument("--retain-logs", default=None, help="retain reference as eval logs (TOFU_EVAL.json or our metrics.json)")
parser.add_argument("--method", default="alter", help="alter | asymlora | lora | npo | gd | ga | rmu")
parser.add_argument("--data-dir", default=None, help="local mirror with the layout of ../shared/data (default: HF hub)")
parser.add_argument("--limit", type=int, default=None, help="quick runs: only the first N records of the retain side "
                    "(retain and general data) and of every evaluation set; a question-answer forget set stays whole")
parser.add_argument("--authors", type=int, default=None,
                    help="TOFU on a budget: target and retain models see only N authors, the forget authors and the "
                         "first retain authors (20 QA each; README, 'real-model experiment')")
parser.add_argument("--eval-limit", type=int, default=None, help="evaluate only the first N items of every set "
                                                                 "(default: --limit)")
parser.add_argument("--out", default=None, help="run folder (default: out/<forget>_<method>)")
parser.add_argument("--cache", default="out/cache", help="folder for cached target/retain models and entropy profiles")
parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved epoch")
parser.add_argument("--overwrite", action="store_true", help="replace a run folder that holds a different config")
parser.add_argument("--stop-after", type=int, default=None, help="stop after this many unlearning epochs, as if interrupted")
# --- ALTER (paper values where the paper gives them; DESIGN.md §5 for the rest)
parser.add_argument("--q", type=float, default=1.5, help="Tsallis entropy index q (1 = Shannon)")
parser.add_argument("--theta", type=float, default=1.2, help="entropy threshold: token is high-entropy if S_q > theta")
parser.add_argument("--theta-quantile", type=float, default=None, help="use this quantile of answer-token entropies as theta")
parser.add_argument("--rank", type=int, default=8, help="LoRA rank r")
parser.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (scaling alpha / r)")
parser.add_argument("--n-experts", type=int, default=4, help="forget experts N (sub-domains), capped by the forget-set size")
parser.add_argument("--tau-high", type=float, default=0.8, help="router temperature at high-entropy tokens")
parser.add_argument("--tau-low", type=float, default=0.01, help="router temperature at low-entropy tokens")
parser.add_argument("--train-gate", default="teacher", choices=["teacher", "soft"], help="gates while training: labels or the router's")
parser.add_argument("--gate", default="entropy", choices=["entropy", "router"], help="routing at inference")
parser.add_argument("--beta", type=float, default=1.0, help="weight of the forget (IHL) term")
parser.add_argument("--gamma", type=float, default=1.0, help="weight of the retain NLL term")
parser.add_argument("--lam", type=float, default=0.01, help="weight of the structural-invariance KL term")
parser.add_argument("--mu", type=float, default=1.0, help="weight of the routing cross-entropy")
parser.add_argument("--no-phase1", action="store_true", help="skip Phase I (ablation)")
parser.add_argument("--a-grad", default="exact", choices=["exact", "position"], help="isolation of the shared A: "
                    "exact (gradient of the high-entropy terms alone) or position (detached at low-entropy tokens)")
# --- RMU (anchors: the WMDP paper's defaults for Zephyr-7B, layer 7 of 32, scaled to the model)
parser.add_argument("--rmu-layer", type=int, default=None, help="RMU's steered layer (default: 7/32 of the depth); "
                    "the down-projections of it and the two layers below train")
parser.add_argument("--rmu-steer", type=float, default=4.0, help="norm of RMU's control vector, in units of the "
                    "layer's mean activation norm on the forget text")
parser.add_argument("--rmu-alpha", type=float, default=None, help="weight of RMU's retain term (paper: 100; toy: 10)")
parser.add_argument("--rmu-lr", type=float, default=None, help="RMU's learning rate (the paper's 5e-5 at 7B)")
# --- optimisation (None: the benchmark's default, see DEFAULTS below)
parser.add_argument("--lr-a", type=float, default=None, help="Phase II learning rate of the shared A")
parser.add_argument("--lr-b", type=float, default=None, help="learning rate of the B experts and routers (and of A in Phase I)")
parser.add_argument("--lr", type=float, default=None, help="learning rate of full-parameter baselines (ga, gd, npo)")
parser.add_argument("--epochs", type=int, default=None, help="unlearning epochs (passes over the forget set)")
parser.add_argument("--phase1-epochs", type=int, default=1, help="ALTER Phase I epochs")
parser.add_argument("--batch-size", type=int, default=4, help="forget examples per step (plus as many retain examples)")
parser.add_argument("--ft-epochs", type=int, default=None, help="epochs of target/retain fine-tuning")
parser.add_argument("--ft-lr", type=float, default=None, help="learning rate of target/retain fine-tuning")
parser.add_argument("--ft-batch-size", type=int, default=16, help="batch size of target/retain fine-tuning")
parser.add_argument("--block-size", type=int, default=None, help="text forgetting: tokens per training window")
# --- system
parser.add_argument("--seed", type=int, default=0, help="seed of everything (data order, init, toy data)")
parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu) | cpu | cuda | mps")
parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="autocast dtype (auto: bf16 on CUDA)")
parser.add_argument("--eval", default="", help="extra benches to evaluate, comma-separated (see evaluate.py)")
parser.add_argument("--eval-batch-size", type=int, default=32, help="sequences per evaluation forward")
parser.add_argument("--eval-mask", default="ou", choices=["ou", "padding"], help="TOFU/MUSE attention mask: ou "
                    "(open-unlearning's: every pad-id token masked, end-of-turn tokens in the prompt too) or padding")
parser.add_argument("--per-subject", type=int, default=None, help="WMDP/MMLU: evaluate the first N questions of "
                                                                  "every subject")
parser.add_argument("--system-prompt", default=None, help="override the chat template's system prompt")
parser.add_argument("--log-every", type=int, default=10, help="log one line every N steps")

# per-benchmark defaults: the paper's lr_B 1e-3 x 3 epochs was for hundreds of forget examples (TOFU forget10:
# 300 steps at batch 4); the toy forget set has 24, so it takes 20 epochs for a similar 120 steps (README)
# (toy_text: its 4 biographies make 3 windows, one step per epoch; the models are those of the toy benchmark.
# RMU on the toy: at the paper's alpha 100 forget-MC accuracy did not move; README, "Text unlearning")
DEFAULTS = {
    "toy": dict(lr_a=1e-5, lr_b=1e-3, lr=1e-4, epochs=20, ft_epochs=16, ft_lr=3e-3, rmu_lr=3e-2, rmu_alpha=10.0),
    "tofu": dict(lr_a=1e-5, lr_b=1e-3, lr=1e-5, epochs=3, ft_epochs=5, ft_lr=1e-5, rmu_lr=5e-5, rmu_alpha=100.0),
    "toy_text": dict(lr_a=1e-5, lr_b=1e-3, lr=1e-4, epochs=100, ft_epochs=16, ft_lr=3e-3, rmu_lr=3e-2, rmu_alpha=10.0,
                     block_size=64),
    "wmdp": dict(lr_a=1e-5, lr_b=1e-3, lr=5e-5, epochs=1, ft_epochs=0, ft_lr=0.0, rmu_lr=5e-5, rmu_alpha=100.0,
                 block_size=256),
    "muse": dict(lr_a=1e-5, lr_b=1e-3, lr=1e-5, epochs=10, ft_epochs=5, ft_lr=1e-5, rmu_lr=5e-5, rmu_alpha=100.0,
                 block_size=256),
}
METHODS = ("alter", "asymlora", "lora", "npo", "gd", "ga", "rmu")
# text forgetting: forget corpus, retain corpus, what is evaluated. WMDP's retain corpora are its own
# in-domain ones (cais/wmdp-corpora), not RMU's wikitext: closer to what must be kept, and one source fewer
TEXT_FORGETS = {
    "toy_text": ("toy_text", "toy_bio_retain90", ["toy_forget10", "toy_mc", "toy_muse"]),
    "wmdp_bio": ("wmdp_bio_forget", "wmdp_bio_retain", ["wmdp_bio", "mmlu"]),
    "wmdp_cyber": ("wmdp_cyber_forget", "wmdp_cyber_retain", ["wmdp_cyber", "mmlu"]),
    "muse_news": ("muse_news_raw_forget", "muse_news_raw_retain1", ["muse_news"]),
    "muse_books": ("muse_books_raw_forget", "muse_books_raw_retain1", ["muse_books"]),
}
FORGETS = ("toy_forget01", "toy_forget05", "toy_forget10", "tofu_forget01", "tofu_forget05", "tofu_forget10") + \
    tuple(TEXT_FORGETS)
RETAIN_OF = {"01": "99", "05": "95", "10": "90"}
FORGET_AUTHORS = {"01": 2, "05": 10, "10": 20}  # TOFU: 20 questions per author
# -----------------------------------------------------------------------------

from alter import (AlterConfig, GatedLM, LossWeights, a_loss, adapter_params, attach, backward, cluster,  # noqa: E402
                   layer_output, method_loss, rmu_setup, save_adapter, seq_logp, trainable_summary)
from data.batching import batch_indices, collate, encode_qa, encode_text  # noqa: E402
from data.benchmarks import load_split, split_names  # noqa: E402
from entropy import pad_profile, profile, threshold  # noqa: E402
from evaluate import (apply_reference, bench_splits, evaluate, load_retain_logs, print_table, write_json,  # noqa: E402
                      write_jsonl)
from model import GPT, TINY, GPTConfig, resolve_checkpoint  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def log0(*a):
    if RANK == 0:
        print(*a, flush=True)

# -----------------------------------------------------------------------------
# data: what the target and retain models are fine-tuned on, and the unlearning examples


def training_examples(bench, which, tok, args):
    """(ids, n_prompt) examples of a fine-tuning corpus. which: "full" or "retainYY". The toy corpus adds the
    general-knowledge QA and the biographies (of the people in the corpus) to the person QA. MUSE (bench
    muse_news|books): the target reads the forget and retain text, the retain model the retain text."""
    if bench.startswith("muse"):
        forget, retain, _ = TEXT_FORGETS[bench]
        texts = [r["text"] for n in ([forget, retain] if which == "full" else [retain])
                 for r in load_split(n, args.data_dir)[:args.limit]]
        return encode_text(tok, texts, args.block_size)
    L = lambda name: load_split(f"{bench}_{name}", args.data_dir, args.seed)[:args.limit]
    rows = load_split(f"{bench}_{which}", args.data_dir, args.seed)
    if args.authors or args.limit:  # the retain side cut, and (for the target) every forget person kept
        pct = forget_pct(args.forget)
        rows = retain_rows(bench, pct, args) + (forget_rows(bench, pct, args) if which == "full" else [])
    ex = encode_qa(tok, rows, system_prompt=args.system_prompt)
    if bench == "toy":
        ex += encode_qa(tok, L("real_authors") + L("world_facts"), system_prompt=args.system_prompt)
        people = {r["person"] for r in rows}
        ex += encode_text(tok, [b["text"] for b in L("bio") if b["person"] in people], block_size=64)
    return ex


def forget_pct(forget):
    """01, 05 or 10: which forget set (toy_text forgets the toy_forget10 people's biographies)."""
    return "10" if forget in TEXT_FORGETS else forget[-2:]


def retain_rows(bench, pct, args):
    """The retain question-answer records: --authors N keeps the first N - k retain authors of TOFU (k forget
    authors; TOFU keeps an author's 20 questions together, and its retain_perturbed eval set is the first 400
    retain questions); --limit N the first N records."""
    rows = load_split(f"{bench}_retain{RETAIN_OF[pct]}", args.data_dir, args.seed)
    if args.authors:
        rows = rows[:20 * (args.authors - FORGET_AUTHORS[pct])]
    return rows[:args.limit]


def forget_rows(bench, pct, args):
    """The forget set's question-answer records, always whole: --limit never cuts away what is to be forgotten
    (the forget people are the last rows of `full`, so `full[:N]` would hold none of them)."""
    return load_split(f"{bench}_forget{pct}", args.data_dir, args.seed)


def finetune(model, examples, epochs, lr, batch_size, seed, device, ctx, desc):
    """Plain next-token fine-tuning (labelled positions only), AdamW, 1 epoch linear warm-up then linear
    decay, gradient norm clipped to 1 (open-unlearning's schedule, HF Trainer's clipping). The output layer runs only where there is a label: the 50k-way
    projection dominates the cost of a small model."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    per_epoch = len(batch_indices(len(examples), batch_size))
    total, step, t0 = epochs * per_epoch, 0, time.time()
    model.train()
    for epoch in range(epochs):
        for idx in tqdm(batch_indices(len(examples), batch_size, seed, epoch), desc=f"{desc} epoch {epoch + 1}",
                        leave=False, disable=None):
            for g in opt.param_groups:
                g["lr"] = lr * min((step + 1) / per_epoch, (total - step) / max(1, total - per_epoch))
            b = collate([examples[i] for i in idx], 0, device)
            with ctx:
                h = model(b["x"], attention_mask=b["mask"], hidden_only=True)
                lab = b["y"] != -100
                loss = F.cross_entropy(model.lm_head(h[lab]).float(), b["y"][lab])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as HF Trainer (max_grad_norm 1.0)
            opt.step()
            step += 1
        log0(f"{desc} epoch {epoch + 1}/{epochs} | loss {loss.item():.3f} | {time.time() - t0:.0f} s")
    model.eval()
    return model


def settings_key(*settings):
    """A short hash of everything that makes a cached artifact what it is."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def model_id(name):
    """A checkpoint's identity for cache keys: the absolute path of a local directory, else the hub id."""
    return os.path.abspath(name) if os.path.isdir(name) else name


def cached_finetune(name, bench, which, tok, args, device, ctx, dtype):
    """Fine-tune --model on a corpus once; later runs load it from the cache. The cache key hashes the model,
    the token ids of every training example (so the data source, --limit/--authors, the prompt format and
    system prompt) and every fine-tuning setting."""
    examples = training_examples(bench, which, tok, args)
    key = settings_key(model_id(args.model), examples, args.ft_epochs, args.ft_lr, args.ft_batch_size, args.seed, dtype)
    path = os.path.join(args.cache, f"{bench}-{which}-{os.path.basename(args.model.rstrip('/'))}-{key}")
    if RANK == 0 and not os.path.exists(os.path.join(path, "config.json")):
        torch.manual_seed(args.seed)
        model = GPT(GPTConfig(**TINY)) if args.model == "tiny" else GPT.from_pretrained(args.model)
        log0(f"fine-tuning the {name} model on {bench}_{which}: {len(examples)} examples, "
             f"{sum(len(e[0]) for e in examples)} tokens, {args.ft_epochs} epochs")
        finetune(model.to(device), examples, args.ft_epochs, args.ft_lr, args.ft_batch_size, args.seed, device, ctx, name)
        model.save_pretrained(path + ".tmp")  # complete before it is visible: a killed run leaves no half model
        os.replace(path + ".tmp", path)
    barrier()
    return GPT.from_pretrained(path, verbose=False).to(device).eval()

# -----------------------------------------------------------------------------
# distributed (torchrun): gloo on CPU, nccl on CUDA; rank 0 caches, logs, saves and evaluates

RANK, WORLD = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def barrier():
    if WORLD > 1:
        torch.distributed.barrier()


def sync_grads(params, active=True):
    """Data parallelism by hand: average the gradients over the processes that had examples (`active`). A
    parameter no process used keeps grad None, so the optimizer skips it exactly as in a single process."""
    n = torch.tensor([float(active)])
    torch.distributed.all_reduce(n)
    for p in params:
        used = torch.tensor([float(p.grad is not None)])
        torch.distributed.all_reduce(used)
        if used.item() > 0:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= n.item()


def shard(idx):
    """This rank's share of a list of example indices."""
    return idx[RANK::WORLD] if WORLD > 1 else idx

# -----------------------------------------------------------------------------


# the valid range of every numeric flag (None, a flag's unset default, is always valid)
AT_LEAST = {1: ("epochs", "rank", "n_experts", "batch_size", "ft_batch_size", "eval_batch_size", "log_every", "limit",
                "eval_limit", "authors", "per_subject"),
            2: ("block_size",),
            0: ("phase1_epochs", "ft_epochs", "stop_after", "beta", "gamma", "lam", "mu", "rmu_alpha", "rmu_layer")}
POSITIVE = ("q", "lr_a", "lr_b", "lr", "ft_lr", "rmu_lr", "alpha", "tau_high", "tau_low", "rmu_steer")


def check_args(args):
    """Every flag checked before any work: one message and exit code 2 for the first bad one."""
    if args.method not in METHODS:
        fail(f"unknown method {args.method!r}; valid: {', '.join(METHODS)}")
    if args.forget not in FORGETS:
        what = "a split but not a forget set" if args.forget in split_names() else "not a forget set"
        fail(f"{args.forget!r} is {what}; valid: {', '.join(FORGETS)}")
    flag = lambda k: "--" + k.replace("_", "-")
    for low, names in AT_LEAST.items():
        for k in names:
            if getattr(args, k) is not None and getattr(args, k) < low:
                fail(f"{flag(k)} must be at least {low}, got {getattr(args, k)}")
    for k in POSITIVE:
        v = getattr(args, k)
        if v is not None and not v > 0:  # also rejects nan
            fail(f"{flag(k)} must be greater than 0, got {v}")
    if args.theta_quantile is not None and not 0 < args.theta_quantile < 1:
        fail(f"--theta-quantile must be between 0 and 1, got {args.theta_quantile}")


def main(args):
    # --- check the request before any work
    check_args(args)
    text = args.forget in TEXT_FORGETS  # text forgetting (every token a training position) or question-answer pairs
    bench = args.forget.split("_")[0]  # toy | tofu | wmdp | muse
    pct = forget_pct(args.forget)
    kind = "toy_text" if args.forget == "toy_text" else bench  # which DEFAULTS
    corpora = load_corpora(args) if text and bench != "toy" else {}  # loaded once, before any work
    if args.authors:
        n_forget = FORGET_AUTHORS[pct]
        if bench != "tofu" or args.target or args.retain_model or args.retain_logs or args.authors <= n_forget:
            fail(f"--authors is for TOFU with fine-tuned target and retain models, and must exceed the "
                 f"{n_forget} forget authors of {args.forget}")
    args.eval_limit = args.eval_limit or args.limit
    if args.model == "tiny" and bench != "toy" and needs_model(args, bench):
        fail("--model tiny is the from-scratch model of the toy benchmark; give a checkpoint for " + bench)
    if args.retain_logs and (text or args.retain_model):
        fail("--retain-logs holds TOFU truth ratios: for tofu_forgetXX, and not with --retain-model")
    for k, v in DEFAULTS[kind].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    out = args.out or os.path.join("out", f"{args.forget}_{args.method}")
    config = {k: v for k, v in vars(args).items() if k not in ("resume", "overwrite", "stop_after", "eval", "device",
                                                               "eval_batch_size", "log_every", "out", "cache")}
    cfg_path = os.path.join(out, "config.json")
    if os.path.exists(cfg_path) and RANK == 0:
        old = json.load(open(cfg_path))
        if old != config and not args.overwrite:
            diff = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != v}
            fail(f"{out} holds a run with another config {diff}; pass --overwrite to replace it, or another --out")
        if old == config and not args.resume and os.path.exists(os.path.join(out, "metrics.json")) and not args.overwrite:
            fail(f"{out} already holds this finished run; pass --resume to re-evaluate it or --overwrite to redo it")
    if args.resume and not os.path.exists(os.path.join(out, "checkpoint.pt")):
        fail(f"--resume: no checkpoint in {out}")
    benches = (TEXT_FORGETS[args.forget][2] if text else [args.forget] + (["toy_mc", "toy_muse"] if bench == "toy" else [])) \
        + [b for b in args.eval.split(",") if b]
    retain_logs = preflight(args, bench, pct, text, benches)

    # --- device, dtype, seeds
    if WORLD > 1:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo")
    device = args.device if args.device != "auto" else \
        "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda" and WORLD > 1:
        device = f"cuda:{RANK}"
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    ctx = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if dtype == "bfloat16" else torch.autocast("cpu", enabled=False)
    log0(f"device {device}, {dtype} ({'autocast' if dtype == 'bfloat16' else 'full precision'}), {WORLD} process(es)")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    t_start = time.time()

    # --- 1, 2: target and retain models
    tok = Tokenizer.gpt2() if args.model == "tiny" and not args.target else \
        Tokenizer.from_pretrained(resolve_checkpoint(args.target or args.model))
    tok.system = args.system_prompt  # training and evaluation prompts alike
    log0("prompt format:", tok.describe())
    corpus = args.forget if bench == "muse" else bench  # what target and retain models are fine-tuned on
    which = "retain" if bench == "muse" else f"retain{RETAIN_OF[pct]}"
    if args.target:
        target = GPT.from_pretrained(args.target).to(device).eval()
    elif bench == "wmdp":  # WMDP unlearns what a pretrained model knows: the target is the model itself
        target = GPT.from_pretrained(args.model).to(device).eval()
    else:
        target = cached_finetune("target", corpus, "full", tok, args, device, ctx, dtype)
    retain = None
    if args.retain_model:
        retain = GPT.from_pretrained(args.retain_model).to(device).eval()
    elif not args.retain_logs and bench != "wmdp" and not (bench == "muse" and args.target):
        retain = cached_finetune("retain", corpus, which, tok, args, device, ctx, dtype)
    t_models = time.time() - t_start

    # --- evaluation of the target and the retain reference (cached), before the target is changed.
    # The reference (the retain model's results, or its logs) sets forget quality and PrivLeak of every row
    ev = lambda lm, ref=None: evaluate(lm, tok, benches, args.data_dir, args.eval_limit, ref, 0, args.eval_batch_size,
                                       device, pct, args.per_subject, seed=args.seed, mask_rule=args.eval_mask)
    rows, reference = {}, retain_logs
    if RANK == 0:
        with ctx:
            if retain is not None:
                rows["retain"] = reference = cached_eval(retain, ev, benches, args, dtype)
            rows["target"] = cached_eval(target, ev, benches, args, dtype)
            for row in rows.values():
                apply_reference(row, reference)
    barrier()

    # --- 3: unlearning data
    if text:  # windows of block_size tokens, every token labelled (a "prompt" of 0 tokens)
        f_name, r_name, _ = TEXT_FORGETS[args.forget]
        T = lambda name: [r["text"] for r in (corpora.get(name) or load_split(name, args.data_dir, args.seed))[:args.limit]]
        forget_ex, retain_ex = encode_text(tok, T(f_name), args.block_size), encode_text(tok, T(r_name), args.block_size)
    else:
        forget_ex = encode_qa(tok, forget_rows(bench, pct, args), system_prompt=args.system_prompt)
        retain_ex = encode_qa(tok, retain_rows(bench, pct, args), system_prompt=args.system_prompt)
    if not forget_ex or not retain_ex:
        fail(f"empty forget ({len(forget_ex)}) or retain ({len(retain_ex)}) set")
    unit = f"windows of <= {args.block_size} tokens" if text else "examples"
    log0(f"unlearning data: {len(forget_ex)} forget / {len(retain_ex)} retain {unit}")
    os.makedirs(out, exist_ok=True)
    if RANK == 0:
        write_json(cfg_path, config)

    model = target  # the model being unlearned (adapters attached in place, or full weights updated)
    w = LossWeights(beta=args.beta, gamma=args.gamma, lam=args.lam, mu=args.mu, alpha=args.rmu_alpha)
    extras = {}  # per-method precomputations: the entropy profile (alter), reference log-probs (npo)
    f_expert = [1] * len(forget_ex)
    theta = args.theta
    if args.method == "alter":
        prof = profile(model, forget_ex + retain_ex, args.q, tok.pad_id, args.eval_batch_size, args.cache, device=device)
        ans_H = torch.cat([p["H"][max(n - 1, 0):] for p, (ids, n) in zip(prof, forget_ex + retain_ex)])
        theta, frac, note = threshold(ans_H, args.theta, args.theta_quantile)
        log0(f"entropy: S_{args.q} of {len(ans_H)} answer tokens, theta {theta:.3f} ({note}): "
             f"{frac:.1%} high, {1 - frac:.1%} low")
        extras["prof"] = prof
    if args.method in ("alter", "asymlora"):
        f_expert = cluster(model, forget_ex, args.n_experts, tok.pad_id, args.seed, device=device)
        n_exp = max(f_expert)
        log0(f"sub-domains: {n_exp} forget experts, sizes {[f_expert.count(d) for d in range(1, n_exp + 1)]}")
    if args.method == "npo":  # the reference is the target itself: its sequence log-probs, once
        with torch.no_grad():
            extras["ref"] = torch.cat([seq_logp(model(b["x"], attention_mask=b["mask"])[0], b["y"]).cpu() for b in
                                       (collate(forget_ex[i:i + 16], tok.pad_id, device) for i in range(0, len(forget_ex), 16))])
    if args.method == "rmu":
        extras["rmu"] = rmu_setup(model, forget_ex, tok.pad_id, args.rmu_layer, args.rmu_steer, args.seed, device)
    torch.manual_seed(args.seed)  # adapter init must not depend on whether the models came from the cache
    if args.method == "rmu":
        log0(f"RMU: layer {extras['rmu']['layer']}, |u| = {extras['rmu']['u'].norm():.2f}, trains "
             f"{', '.join(extras['rmu']['names'])}")
    elif args.method in ("alter", "asymlora", "lora"):
        acfg = AlterConfig(rank=args.rank, alpha=args.alpha, n_experts=max(f_expert), router=args.method != "lora",
                           tau_high=args.tau_high, tau_low=args.tau_low)
        attach(model, acfg)
        log0(trainable_summary(model))
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        log0(f"parameters: {model.num_params() / 1e6:.2f}M, all trainable (full fine-tuning)")
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # phases: (phase, epochs); ALTER runs Phase I then Phase II, the others one phase
    phases = [(1, 0 if args.no_phase1 else args.phase1_epochs), (2, args.epochs)] if args.method == "alter" \
        else [(2, args.epochs)]
    start_epoch, t_train = 0, 0.0
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True) if args.resume else None
    if ckpt:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in ckpt["trainable"]:
                    p.copy_(ckpt["trainable"][n])
        start_epoch, t_train = ckpt["epoch"], ckpt["train_seconds"]
        log0(f"resuming {out} after epoch {start_epoch}")

    def make_batch(fidx, ridx, phase):
        b = collate([forget_ex[i] for i in fidx] + [retain_ex[i] for i in ridx], tok.pad_id, device)
        b["expert"] = torch.tensor([f_expert[i] for i in fidx] + [0] * len(ridx), device=device)
        if args.method == "alter":
            items = [extras["prof"][i] for i in fidx] + [extras["prof"][len(forget_ex) + i] for i in ridx]
            b["high"] = (pad_profile(items, "H", b["x"].size(1)) > theta).to(device)
            b["top_ids"] = torch.cat([it["top_ids"] for it in items]).to(device)
            b["top_logp"] = torch.cat([it["top_logp"] for it in items]).to(device)
            b["gate"], b["a_grad"] = args.train_gate, args.a_grad
        if args.method == "npo":
            b["ref_logp"] = torch.cat([extras["ref"][fidx], torch.zeros(len(ridx))]).to(device)
        if args.method == "rmu":
            r = extras["rmu"]
            with torch.no_grad():
                b["h_ref"] = layer_output(r["frozen"], r["layer"], b["x"], b["mask"])
            b.update(rmu_layer=r["layer"], rmu_u=r["u"])
        return b

    def optimizer(phase):
        if args.method not in ("alter", "asymlora", "lora"):
            return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                     lr=args.rmu_lr if args.method == "rmu" else args.lr, weight_decay=0.0)
        a = [p for n, p in adapter_params(model) if "lora_A" in n]
        rest = [p for n, p in adapter_params(model) if "lora_A" not in n]
        # ALTER's Phase II moves A slowly (paper: 1e-5); in Phase I A learns the structure at the experts' rate,
        # and plain LoRA / AsymLoRA train A and B alike
        lr_a = args.lr_a if args.method == "alter" and phase == 2 else args.lr_b
        return torch.optim.AdamW([{"params": a, "lr": lr_a}, {"params": rest, "lr": args.lr_b}], weight_decay=0.0)

    # --- the unlearning loop: one forget batch + as many random retain examples per step
    epoch_global, step = 0, 0
    for phase, n_epochs in phases:
        opt = optimizer(phase)
        for epoch in range(n_epochs):
            epoch_global += 1
            if epoch_global <= start_epoch:
                if ckpt and epoch_global == start_epoch:
                    opt.load_state_dict(ckpt["optimizer"])
                continue
            if args.stop_after is not None and epoch_global > args.stop_after:
                log0(f"stopping after epoch {args.stop_after} (--stop-after)")
                return
            t0 = time.time()
            rng = random.Random(args.seed * 7919 + epoch_global)
            model.train()
            for fidx in tqdm(batch_indices(len(forget_ex), args.batch_size, args.seed, epoch_global),
                             desc=f"phase {phase} epoch {epoch_global}", leave=False, disable=None):
                ridx = [rng.randrange(len(retain_ex)) for _ in fidx]
                ts = time.time()
                opt.zero_grad(set_to_none=True)
                if shard(fidx):  # with torchrun, a last batch smaller than the world leaves some ranks nothing
                    b = make_batch(shard(fidx), shard(ridx), phase)
                    with ctx:
                        loss, parts = method_loss(args.method, phase, model, b, w)
                    if not torch.isfinite(loss):
                        fail(f"phase {phase} epoch {epoch_global} step {step}: loss is {loss.item()} "
                             f"({ {k: round(v.item(), 4) for k, v in parts.items()} }); stopped. The last good "
                             f"checkpoint (epoch {epoch_global - 1}) is kept in {out}")
                    # ALTER's Phase II: A's gradient from the high-entropy terms alone (Phase I's loss is all of them)
                    exact = args.method == "alter" and phase == 2 and args.a_grad == "exact"
                    backward(model, loss, a_loss(parts, phase, w) if exact else None)
                if WORLD > 1:
                    sync_grads([p for p in model.parameters() if p.requires_grad], active=bool(shard(fidx)))
                opt.step()
                if step % args.log_every == 0 and shard(fidx):
                    named = ", ".join(f"{k} {v.item():.3f}" for k, v in parts.items())
                    lrs = "/".join(f"{g['lr']:.0e}" for g in opt.param_groups)
                    log0(f"phase {phase} epoch {epoch_global} step {step:04d} | loss {loss.item():.3f} ({named}) "
                         f"| lr {lrs} | {(time.time() - ts) * 1e3:.0f} ms")
                step += 1
            t_train += time.time() - t0
            model.eval()
            if RANK == 0:  # the product after every epoch (atomic writes), and a checkpoint to resume from
                save_product(model, args, out, theta, benches, dtype)
                torch.save({"epoch": epoch_global, "train_seconds": t_train, "optimizer": opt.state_dict(),
                            "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}},
                           os.path.join(out, "checkpoint.pt.tmp"))
                os.replace(os.path.join(out, "checkpoint.pt.tmp"), os.path.join(out, "checkpoint.pt"))
    barrier()
    if RANK != 0:
        return torch.distributed.destroy_process_group()

    # --- 4: evaluation of the unlearned model, beside the target and retain rows computed before training
    with ctx:
        if hasattr(model, "alter_state"):
            model.alter_state.set("router")
        lm = GatedLM(model, args.q, theta, inference_gate(args)) if hasattr(model, "alter_state") else model
        rows[args.method], items = ev(lm, reference)
    rows[args.method].update(train_seconds=round(t_train, 1), trainable_params=n_trainable,
                             model_seconds=round(t_models, 1), total_seconds=round(time.time() - t_start, 1))
    write_json(os.path.join(out, "metrics.json"), {"unlearned": rows[args.method], "target": rows["target"],
                                                  **({"retain": rows["retain"]} if "retain" in rows else {})})
    write_jsonl(os.path.join(out, "items.jsonl"), items)
    order = ["target"] + (["retain"] if "retain" in rows else []) + [args.method]
    keys = {"tofu": QA_KEYS, "toy": QA_KEYS + ["mc_forget_acc", "mc_retain_acc", "forget_verbmem_ROUGE"],
            "toy_text": ["mc_forget_acc", "mc_retain_acc", "general_acc", "model_utility", "forget_verbmem_ROUGE",
                         "muse_privleak", "forget_Q_A_ROUGE", "forget_quality"],
            "wmdp": [f"{args.forget}_acc", "mmlu_acc"],
            "muse": ["forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "muse_privleak"]}[kind]
    keys = keys + ["train_seconds", "trainable_params"]
    print()
    print_table({k: rows[k] for k in order}, keys)
    print(f"\n{out}/metrics.json written; total {time.time() - t_start:.0f} s "
          f"(models {t_models:.0f} s, unlearning {t_train:.0f} s)")


QA_KEYS = ["forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE",
           "retain_Q_A_ROUGE", "privleak"]


def cached_eval(model, ev, benches, args, dtype):
    """Evaluate a target or retain model once per (checkpoint, every evaluation setting); later runs read the
    result. Its forget quality and PrivLeak are then set against the reference by the caller."""
    key = settings_key(model_id(model.source), model_id(args.target or args.model),  # the model, its tokenizer
                       benches, args.eval_limit, args.data_dir and os.path.abspath(args.data_dir),
                       args.seed, args.per_subject, args.system_prompt, dtype, args.eval_mask, args.eval_batch_size)
    path = os.path.join(args.cache, f"eval-{key}.json")
    if os.path.exists(path):
        return json.load(open(path))
    res, _ = ev(model)
    os.makedirs(args.cache, exist_ok=True)
    write_json(path, res)
    return res


def needs_model(args, bench):
    """Whether --model is used: fine-tuned into the target or the retain model, or (WMDP) the target itself."""
    retain_ft = not (args.retain_model or args.retain_logs or bench == "wmdp" or (bench == "muse" and args.target))
    return not args.target or retain_ft


def preflight(args, bench, pct, text, benches):
    """Load and check every split the run reads before any model is loaded or trained, so that a malformed
    file fails in seconds rather than after hours of fine-tuning. Returns the retain logs, if any."""
    names = [] if text else [f"{bench}_{s}" for s in ("full", f"retain{RETAIN_OF[pct]}", f"forget{pct}")]
    if bench == "toy":  # WMDP's and MUSE's corpora were read by load_corpora
        names += ["toy_real_authors", "toy_world_facts", "toy_bio"] + list(TEXT_FORGETS["toy_text"][:2])
    for name in dict.fromkeys(names + [n for b in benches for n in bench_splits(b, pct)]):
        load_split(name, args.data_dir, args.seed)
    # every checkpoint the run will load, found (hub ids fetched) now rather than after hours of fine-tuning
    for flag in ("target", "retain_model") + (("model",) if args.model != "tiny" and needs_model(args, bench) else ()):
        name = getattr(args, flag)
        if name and not os.path.exists(os.path.join(resolve_checkpoint(name), "config.json")):
            fail(f"--{flag.replace('_', '-')} {name}: no checkpoint there (no config.json)")
    if args.method == "rmu" and args.rmu_layer is not None:  # the depth, known without loading the weights
        cfg = os.path.join(resolve_checkpoint(args.target or args.model), "config.json") \
            if args.target or args.model != "tiny" else None
        hf = json.load(open(cfg)) if cfg else {}
        n_layer = hf.get("num_hidden_layers", hf.get("n_layer")) if cfg else TINY["n_layer"]
        if n_layer is not None and args.rmu_layer >= n_layer:
            fail(f"--rmu-layer must be in 0..{n_layer - 1} for this model, got {args.rmu_layer}")
    if not args.retain_logs:
        return None
    n = len(load_split(f"{bench}_forget{pct}_perturbed", args.data_dir, args.seed))
    return load_retain_logs(args.retain_logs, n, args.eval_limit, args.eval_mask)


def load_corpora(args):
    """The forget and retain corpora of a text forget set, {split: records}; when any is missing, say at once
    which ones and where they come from."""
    corpora, missing = {}, []
    for name in TEXT_FORGETS[args.forget][:2]:
        try:
            corpora[name] = load_split(name, args.data_dir)
        except FileNotFoundError as e:
            missing.append(f"  - {e}")
    if missing:
        benches = ",".join(TEXT_FORGETS[args.forget][2])
        fail(f"{args.forget} needs its forget and retain corpora; missing:\n" + "\n".join(missing) +
             f"\nThe evaluation alone runs without them: python evaluate.py --model MODEL --bench {benches}" +
             (f" --data-dir {args.data_dir}" if args.data_dir else ""))
    return corpora


def inference_gate(args):
    """ALTER routes by --gate; AsymLoRA by its dense router (no entropy); plain LoRA has one expert."""
    return args.gate if args.method == "alter" else "router"


def save_product(model, args, out, theta, benches, dtype):
    """The adapter or, for full-parameter methods, the whole model. The adapter's header carries what
    evaluate.py needs to run it as this run did: the gate, q, the theta actually used (often the quantile
    fallback), the prompt and evaluation settings, and the base model it was trained on."""
    if hasattr(model, "alter_config"):
        path = lambda p: p and os.path.abspath(p)
        run = dict(q=args.q, theta=theta, gate=inference_gate(args), seed=args.seed, system_prompt=args.system_prompt,
                   eval_mask=args.eval_mask, base_model=path(model.source), benches=benches, pct=forget_pct(args.forget),
                   eval_limit=args.eval_limit, per_subject=args.per_subject, data_dir=path(args.data_dir),
                   retain_logs=path(args.retain_logs), dtype=dtype, eval_batch_size=args.eval_batch_size)
        save_adapter(model, os.path.join(out, "adapter.safetensors"), {"run": json.dumps(run)})
    else:
        model.save_pretrained(os.path.join(out, "model"))


if __name__ == "__main__":
    try:
        main(parser.parse_args())
    except (ValueError, FileNotFoundError) as e:  # bad data, checkpoints or logs: one message, no traceback
        fail(str(e))
