"""
One command from a base model to an evaluated unlearned model.

    python train.py --forget tofu_forget10                 # TOFU with open-unlearning's Llama-3.2-1B models (GPU)
    python train.py --forget toy_forget10                  # the offline toy benchmark: CPU, minutes
    python train.py --forget tofu_forget10 --model gpt2 --method npo   # target and retain fine-tuned from gpt2
    python train.py --forget toy_text --method rmu         # text unlearning, offline (WMDP/MUSE-like)
    torchrun --nproc_per_node=2 train.py --forget toy_forget10   # data parallel (gloo on CPU)

The run, `main` below, one function per stage: the plan (plan.py: every check before any work, the
benchmark's standard models, what will happen and an estimate of its time and memory), the unlearning data,
the target and retain models (given, or fine-tuned from --model and cached), the method's preparation,
unlearning (methods.py: ALTER's Phase I and Phase II, or a baseline; saved after every epoch, resumable), and
evaluation of target, retain and unlearned side by side.
"""
import argparse
import json
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from alter import GatedLM, adapter_file, save_adapter
from checkpoint import resolve_checkpoint
from data.batching import batch_indices, collate
from data.forget_sets import RETAIN_OF, unlearning_examples
from evaluate import evaluate, print_table
from routing import print_routing, routing_diagnostics
from finetune import cache_path, cached_finetune, model_id, settings_key
from methods import METHODS, Flag, UnlearningData, method_flags
from metrics import apply_reference, write_json, write_jsonl
from model import GPT, linear_weights_in
from plan import device_and_dtype, estimate, fail, keep_freed_memory, limit_kernel_cache, log0, plan, retain_finetuned
from tokenizer import Tokenizer

# distributed (torchrun): gloo on CPU, nccl on CUDA; rank 0 caches, logs, saves and evaluates
RANK, WORLD = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

# -----------------------------------------------------------------------------
# knobs: the flags every run has; each method's own flags are in its METHODS entry (methods.py)
FLAGS = (
    # --- what to forget, and from which model
    Flag("--forget", str, "toy_forget10", "what to forget: toy_forget01|05|10, tofu_forget01|05|10 "
         "(question-answer pairs), toy_text, wmdp_bio|cyber, muse_news|books (text)"),
    Flag("--model", str, help="base model fine-tuned into target and retain models: a HF hub id, a checkpoint dir, "
         "or 'tiny' (from scratch, toy only); default: the benchmark's standard models (plan.MODELS)"),
    Flag("--target", str, help="target model (hub id or dir); default: fine-tune --model on the full data"),
    Flag("--retain-model", str, help="retain reference model; default: fine-tune --model on the retain data"),
    Flag("--retain-logs", str, help="retain reference as eval logs (TOFU_EVAL.json or our metrics.json)"),
    Flag("--method", str, "alter", " | ".join(METHODS)),
    Flag("--data-dir", str, help="local copy of the benchmark files, in the layout data/benchmarks.py names "
         "(default: HF hub)"),
    Flag("--limit", int, help="quick runs: only the first N records of the retain side (retain and general "
         "data) and of every evaluation set; a question-answer forget set stays whole", at_least=1),
    Flag("--authors", int, help="TOFU on a budget: target and retain models see only N authors, the forget "
         "authors and the first retain authors (20 QA each; README, 'Real model, real TOFU')", at_least=1),
    Flag("--forget-pair", int, help="TOFU forget01 with --authors: forget the K-th pair of forget10's 20 authors "
         "instead (0-9; 9 is forget01's own pair)", choices=tuple(range(10))),
    Flag("--eval-limit", int, help="evaluate only the first N items of every set (default: --limit)", at_least=1),
    Flag("--out", str, help="run folder (default: out/<forget>_<method>)"),
    Flag("--cache", str, "out/cache", "folder for cached target/retain models and entropy profiles"),
    Flag("--resume", switch=True, help="continue the run in --out from its last saved epoch"),
    Flag("--overwrite", switch=True, help="replace a run folder that holds a different config"),
    Flag("--stop-after", int, help="stop after this many unlearning epochs, as if interrupted", at_least=0),
    # --- optimisation (None: the benchmark's default, DEFAULTS below)
    Flag("--epochs", int, help="unlearning epochs (passes over the forget set)", at_least=1),
    Flag("--batch-size", int, 4, "forget examples per step (plus as many retain examples)", at_least=1),
    Flag("--ft-epochs", int, help="epochs of target/retain fine-tuning", at_least=0),
    Flag("--ft-lr", help="learning rate of target/retain fine-tuning", positive=True),
    Flag("--ft-batch-size", int, 16, "batch size of target/retain fine-tuning", at_least=1),
    Flag("--block-size", int, help="text forgetting: tokens per training window", at_least=2),
    # --- system
    Flag("--seed", int, 0, "seed of everything (data order, init, toy data)"),
    Flag("--device", str, "auto", "auto (cuda > mps > cpu) | cpu | cuda | mps"),
    Flag("--dtype", str, "auto", "autocast dtype (auto: bf16 on CUDA and on CPUs with native bf16, AVX512-BF16 "
         "or AMX; else float32)", choices=("auto", "float32", "bfloat16")),
    Flag("--threads", int, 0, "CPU threads (0: the cores not busy with other work)", at_least=0),
    Flag("--eval", str, "", "extra benches to evaluate, comma-separated (see evaluate.py)"),
    Flag("--eval-batch-size", int, 32, "sequences per evaluation forward", at_least=1),
    Flag("--eval-mask", str, "ou", "TOFU/MUSE attention mask: ou (open-unlearning's: every pad-id token masked, "
         "end-of-turn tokens in the prompt too) or padding", choices=("ou", "padding")),
    Flag("--per-subject", int, help="WMDP/MMLU: evaluate the first N questions of every subject", at_least=1),
    Flag("--system-prompt", str, help="override the chat template's system prompt"),
    Flag("--log-every", int, 10, "log one line every N steps", at_least=1),
)

QA_KEYS = ["forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE",
           "retain_Q_A_ROUGE", "privleak"]
SHOWN = {"tofu": QA_KEYS, "toy": QA_KEYS + ["mc_forget_acc", "mc_retain_acc", "forget_verbmem_ROUGE"],
         "toy_text": ["mc_forget_acc", "mc_retain_acc", "general_acc", "model_utility", "forget_verbmem_ROUGE",
                      "muse_privleak", "forget_Q_A_ROUGE", "forget_quality"],
         "wmdp": ["{forget}_acc", "mmlu_acc"],
         "muse": ["forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "muse_privleak"]}

def make_parser():
    parser = argparse.ArgumentParser(description="ALTER unlearning (and baselines), end to end")
    for f in FLAGS:
        f.add_to(parser)
    seen = {f.dest for f in FLAGS}
    for name, m in METHODS.items():
        group = parser.add_argument_group(f"--method {name}", m.about)
        for f in m.flags:
            if f.dest not in seen:
                f.add_to(group)
                seen.add(f.dest)
    return parser


parser = make_parser()


def main(args):
    task = plan(args, FLAGS + tuple(method_flags().values()))    # 1. checks, defaults, what will happen
    env = start(args, task)                                      # device, dtype, seeds, processes
    tok = Tokenizer.gpt2() if args.model == "tiny" and not args.target else \
        Tokenizer.from_pretrained(resolve_checkpoint(args.target or args.model))
    tok.system = args.system_prompt  # training and evaluation prompts alike
    log0("  prompt  ", tok.describe())
    data = unlearning_data(task, tok, args)                      # 2. unlearning data
    estimate(task, data, finetuning_examples(task, tok, args, env), args, env)  # time and memory, measured
    target, retain = load_models(task, tok, args, env)           # 3. target and retain models
    rows, reference = evaluate_references(target, retain, task, tok, args, env)
    del retain  # only its evaluation is needed from here on
    if RANK == 0:
        write_json(os.path.join(task.out, "config.json"), task.config)
    method = METHODS[args.method]
    torch.manual_seed(args.seed)  # adapter init must not depend on whether the models came from the cache
    run = method.prepare(target, data, args, env.device, log0)   # 4. the method's preparation
    t_train = unlearn(target, method, data, run, task, args, env)  # 5. Phase I and II, or a baseline
    if t_train is None or RANK != 0:  # --stop-after, or a rank that is not 0
        return WORLD > 1 and torch.distributed.destroy_process_group()
    evaluate_unlearned(target, run, data, rows, reference, t_train, task, tok, args, env)  # 6. evaluation

# -----------------------------------------------------------------------------
# 1. the plan: every check before any work


@dataclass
class Env:
    device: str
    dtype: str          # "float32" or "bfloat16" (autocast)
    ctx: object         # the autocast context of every forward
    t_start: float      # when the run started (time.time())
    t_models: float = 0.0  # seconds spent on the target and retain models
    checkpoints: dict = None  # where the target and retain models are (their rows' "checkpoint"; relearn.py)


def start(args, task):
    """Processes (torchrun), device, dtype, seeds."""
    if WORLD > 1:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo")
    device, dtype = device_and_dtype(args, task.width)
    keep_freed_memory(device)  # CPU: each step's large buffers reused, not mapped anew (plan.keep_freed_memory)
    limit_kernel_cache()  # CPU bf16: oneDNN keeps 32 compiled kernels, not 1,024 (plan.limit_kernel_cache)
    if device == "cuda" and WORLD > 1:
        device = f"cuda:{RANK}"
    ctx = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if dtype == "bfloat16" else \
        torch.autocast("cpu", enabled=False)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    return Env(device, dtype, ctx, time.time())

# -----------------------------------------------------------------------------
# 2. target and retain models, and their evaluation


def finetuned(task, args):
    """{name: (corpus, which split)} of the target and retain models fine-tuned from --model."""
    corpus = args.forget if task.bench == "muse" else task.bench
    which = "retain" if task.bench == "muse" else f"retain{RETAIN_OF[task.pct]}"
    return {**({} if args.target or task.bench == "wmdp" else {"target": (corpus, "full")}),
            **({"retain": (corpus, which)} if retain_finetuned(args, task.bench) else {})}


def finetuning_examples(task, tok, args, env):
    """How many examples each model still to be fine-tuned (not cached) trains on."""
    paths = {k: cache_path(*v, tok, args, env) for k, v in finetuned(task, args).items()}
    return [len(ex) for path, ex in paths.values() if not os.path.exists(os.path.join(path, "config.json"))]


def load_models(task, tok, args, env):
    """The model to unlearn (the target) and the retain reference (None when there is none, or logs)."""
    ft = finetuned(task, args)
    if "target" in ft:
        target = cached_finetune("target", *ft["target"], tok, args, env, log0)
    else:  # given; WMDP unlearns what a pretrained model knows: the model itself
        target = GPT.from_pretrained(args.target or args.model).to(env.device).eval()
    retain = None
    if args.retain_model:
        retain = GPT.from_pretrained(args.retain_model).to(env.device).eval()
    elif "retain" in ft:
        retain = cached_finetune("retain", *ft["retain"], tok, args, env, log0)
    env.t_models = time.time() - env.t_start
    env.checkpoints = {"target": model_id(target.source), "retain": retain and model_id(retain.source)}
    return target, retain


def run_eval(lm, tok, task, args, env, reference=None):
    """Every bench of the task on one model: (summary, per-item list). Runs under env.ctx (the caller's)."""
    with linear_weights_in(lm, env.dtype):
        return evaluate(lm, tok, task.benches, data_dir=args.data_dir, limit=args.eval_limit, reference=reference,
                        batch_size=args.eval_batch_size, device=env.device, pct=task.pct,
                        per_subject=args.per_subject, seed=args.seed, mask_rule=args.eval_mask,
                        forget_pair=args.forget_pair)


def evaluate_references(target, retain, task, tok, args, env):
    """The target and the retain reference evaluated (cached) before the target is changed. The reference (the
    retain model's results, or its logs) sets forget quality and PrivLeak of every row. Returns (rows,
    reference)."""
    rows, reference = {}, task.retain_logs
    if RANK == 0:
        with env.ctx:
            if retain is not None:
                rows["retain"] = reference = cached_eval(retain, tok, task, args, env)
            rows["target"] = cached_eval(target, tok, task, args, env)
            for row in rows.values():
                apply_reference(row, reference)
    barrier()
    return rows, reference


def cached_eval(model, tok, task, args, env):
    """Evaluate a target or retain model once per (checkpoint, every evaluation setting); later runs read the
    result. Its forget quality and PrivLeak are then set against the reference by the caller."""
    key = settings_key(model_id(model.source), model_id(args.target or args.model),  # the model, its tokenizer
                       task.benches, args.eval_limit, args.data_dir and os.path.abspath(args.data_dir), args.seed,
                       args.per_subject, args.system_prompt, env.dtype, args.eval_mask, args.eval_batch_size,
                       *([] if args.forget_pair is None else [args.forget_pair]))  # older keys stay valid
    path = os.path.join(args.cache, f"eval-{key}.json")
    if os.path.exists(path):
        return json.load(open(path))
    res, _ = run_eval(model, tok, task, args, env)
    os.makedirs(args.cache, exist_ok=True)
    write_json(path, res)
    return res

# -----------------------------------------------------------------------------
# 3. unlearning data


def unlearning_data(task, tok, args):
    """The forget and retain examples (data/forget_sets.py), checked and counted."""
    forget, retain = unlearning_examples(tok, args, task.corpora)
    if not forget or not retain:
        fail(f"empty forget ({len(forget)}) or retain ({len(retain)}) set")
    unit = f"windows of <= {args.block_size} tokens" if task.text else "examples"
    log0(f"  examples {len(forget)} forget / {len(retain)} retain {unit}")
    os.makedirs(task.out, exist_ok=True)
    return UnlearningData(forget, retain, tok.pad_id)

# -----------------------------------------------------------------------------
# 4. unlearning: one forget batch + as many random retain examples per step


def unlearn(model, method, data, run, task, args, env):
    """Every phase of the method, epoch by epoch, saving after each; resumes from the run folder's checkpoint.
    Returns the training seconds, or None when stopped by --stop-after."""
    ckpt = load_checkpoint(model, task.out) if args.resume else None
    start_epoch, t_train = (ckpt["epoch"], ckpt["train_seconds"]) if ckpt else (0, 0.0)
    epoch, step = 0, 0
    for phase, n_epochs in method.phases(args):
        opt = torch.optim.AdamW(method.groups(model, phase, args), weight_decay=0.0)
        for _ in range(n_epochs):
            epoch += 1
            if epoch <= start_epoch:  # done before the interruption
                if epoch == start_epoch:
                    opt.load_state_dict(ckpt["optimizer"])
                continue
            if args.stop_after is not None and epoch > args.stop_after:
                log0(f"stopping after epoch {args.stop_after} (--stop-after)")
                return None
            t0 = time.time()
            step = train_epoch(model, method, data, run, opt, phase, epoch, step, task, args, env)
            t_train += time.time() - t0
            if RANK == 0:  # the product after every epoch (atomic writes), and a checkpoint to resume from
                save_product(model, run, task, args, env)
                save_checkpoint(model, opt, epoch, t_train, task.out)
    barrier()
    return t_train


def train_epoch(model, method, data, run, opt, phase, epoch, step, task, args, env):
    """One pass over the forget set; returns the step count after it."""
    rng = random.Random(args.seed * 7919 + epoch)
    expert = run.get("expert", [1] * len(data.forget))
    model.train()
    for fidx in tqdm(batch_indices(len(data.forget), args.batch_size, args.seed, epoch),
                     desc=f"phase {phase} epoch {epoch}", leave=False, disable=None):
        ridx = [rng.randrange(len(data.retain)) for _ in fidx]
        fidx, ridx, ts = shard(fidx), shard(ridx), time.time()
        opt.zero_grad(set_to_none=True)
        if fidx:  # with torchrun, a last batch smaller than the world leaves some ranks nothing
            b = collate([data.forget[i] for i in fidx] + [data.retain[i] for i in ridx], data.pad_id, env.device)
            b["expert"] = torch.tensor([expert[i] for i in fidx] + [0] * len(ridx), device=env.device)
            method.add_to_batch(b, run, fidx, ridx)
            with env.ctx:
                loss, parts = method.loss(model, b, phase, args)
            if not torch.isfinite(loss):
                fail(f"phase {phase} epoch {epoch} step {step}: loss is {loss.item()} "
                     f"({ {k: round(v.item(), 4) for k, v in parts.items()} }); stopped. The last good "
                     f"checkpoint (epoch {epoch - 1}) is kept in {task.out}")
            method.backward(model, loss, parts, phase, args)
        if WORLD > 1:
            sync_grads([p for p in model.parameters() if p.requires_grad], active=bool(fidx))
        opt.step()
        if step % args.log_every == 0 and fidx:
            named = ", ".join(f"{k} {v.item():.3f}" for k, v in parts.items())
            lrs = "/".join(f"{g['lr']:.0e}" for g in opt.param_groups)
            log0(f"phase {phase} epoch {epoch} step {step:04d} | loss {loss.item():.3f} ({named}) | lr {lrs} | "
                 f"{(time.time() - ts) * 1e3:.0f} ms")
        step += 1
    model.eval()
    return step


def load_checkpoint(model, out):
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in ckpt["trainable"]:
                p.copy_(ckpt["trainable"][n])
    log0(f"resuming {out} after epoch {ckpt['epoch']}")
    return ckpt


def save_checkpoint(model, opt, epoch, t_train, out):
    torch.save({"epoch": epoch, "train_seconds": t_train, "optimizer": opt.state_dict(),
                "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}},
               os.path.join(out, "checkpoint.pt.tmp"))
    os.replace(os.path.join(out, "checkpoint.pt.tmp"), os.path.join(out, "checkpoint.pt"))


def save_product(model, run, task, args, env):
    """The adapter or, for full-parameter methods, the whole model. The adapter's header carries what
    evaluate.py needs to run it as this run did: the gate, q, the theta actually used (often the quantile
    fallback), the prompt and evaluation settings, the base model it was trained on, and the sub-domain of
    each forget question (for --gate oracle and the routing diagnostics)."""
    if not hasattr(model, "alter_config"):
        return model.save_pretrained(os.path.join(task.out, "model"))
    path = lambda p: p and os.path.abspath(p)
    header = dict(q=args.q, theta=run.get("theta", args.theta), gate=run.get("gate", "router"), seed=args.seed,
                  system_prompt=args.system_prompt, eval_mask=args.eval_mask, base_model=path(model.source),
                  benches=task.benches, pct=task.pct, eval_limit=args.eval_limit, per_subject=args.per_subject,
                  data_dir=path(args.data_dir), retain_logs=path(args.retain_logs), dtype=env.dtype,
                  eval_batch_size=args.eval_batch_size, forget_pair=args.forget_pair,
                  experts=[[list(k), d] for k, d in run.get("experts", {}).items()])
    save_adapter(model, adapter_file(task.out), {"run": json.dumps(header)})

# -----------------------------------------------------------------------------
# distributed: data parallelism by hand


def barrier():
    if WORLD > 1:
        torch.distributed.barrier()


def shard(idx):
    """This rank's share of a list of example indices."""
    return idx[RANK::WORLD] if WORLD > 1 else idx


def sync_grads(params, active=True):
    """Average the gradients over the processes that had examples (`active`). A parameter no process used
    keeps grad None, so the optimizer skips it exactly as in a single process."""
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

# -----------------------------------------------------------------------------
# 5. evaluation of the unlearned model, beside the target and retain rows computed before training


def evaluate_unlearned(model, run, data, rows, reference, t_train, task, tok, args, env):
    """Evaluate as the method runs at inference (ALTER: the entropy gate), write metrics.json and items.jsonl,
    print the table."""
    lm = GatedLM(model, args.q, run.get("theta", args.theta), run["gate"], run.get("experts")) if "gate" in run \
        else model
    with env.ctx:
        rows[args.method], items = run_eval(lm, tok, task, args, env, reference)
        if getattr(model, "routing", None) and model.routing.routers:  # how the gate routed (ALTER, AsymLoRA)
            rows[args.method]["routing"] = diagnose(lm, run, data, task, tok, args, env)
    rows[args.method].update(train_seconds=round(t_train, 1),
                             trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
                             model_seconds=round(env.t_models, 1), total_seconds=round(time.time() - env.t_start, 1))
    refs = {k: {**rows[k], "checkpoint": env.checkpoints[k]} for k in ("target", "retain") if k in rows}
    write_json(os.path.join(task.out, "metrics.json"), {"unlearned": rows[args.method], **refs})
    write_jsonl(os.path.join(task.out, "items.jsonl"), items)
    keys = [k.format(forget=args.forget) for k in SHOWN[task.kind]] + ["train_seconds", "trainable_params"]
    print()
    print_table({k: rows[k] for k in ("target", "retain", args.method) if k in rows}, keys)
    if "routing" in rows[args.method]:
        print_routing(rows[args.method]["routing"], lm)
    print(f"\n{task.out}/metrics.json written; total {time.time() - env.t_start:.0f} s "
          f"(models {env.t_models:.0f} s, unlearning {t_train:.0f} s)")


def diagnose(lm, run, data, task, tok, args, env, n_windows=64):
    """Routing diagnostics (routing.routing_diagnostics) on the evaluated question-answer sets, and for text
    forgetting on the first n_windows forget (with their sub-domains) and retain training windows."""
    extra = {} if not task.text else {
        "forget_train": (data.forget[:n_windows], run["expert"][:n_windows]),
        "retain_train": (data.retain[:n_windows], None)}
    with linear_weights_in(lm, env.dtype):
        return routing_diagnostics(lm, tok, task.benches, args.data_dir, args.eval_limit, args.eval_batch_size,
                                   env.device, args.seed, args.eval_mask, extra, args.forget_pair)


if __name__ == "__main__":
    try:
        main(parser.parse_args())
    except (ValueError, FileNotFoundError) as e:  # bad data, checkpoints or logs: one message, no traceback
        fail(str(e))
