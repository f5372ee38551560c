"""
The plan of a run, train.py's first stage, made before any heavy work: every flag checked, the benchmark's
defaults filled in (its standard models too), the run folder checked, every split and checkpoint found, and
what will happen printed: models and their sizes, device and dtype, examples and steps of every stage, and
(`estimate`, once the tokenizer and data are at hand) time and memory extrapolated from measured steps.
Nothing is refused for being slow: the user decides.
"""
import ctypes
import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass

import torch

from checkpoint import WEIGHTS, HubError, config_from_hf, resolve_checkpoint
from data.batching import collate
from data.benchmarks import load_split, split_names
from data.forget_sets import (FORGET_AUTHORS, FORGETS, RETAIN_OF, TEXT_FORGETS, eval_benches, forget_pct,
                              load_corpora, training_splits)
from evaluate import bench_splits
from methods import METHODS, full_groups
from model import GPT, TINY, GPTConfig

RANK = int(os.environ.get("RANK", 0))

# per-benchmark defaults: the paper's lr_B 1e-3 x 3 epochs was for hundreds of forget examples (TOFU forget10:
# 300 steps at batch 4); the toy forget set has 24, so it takes 20 epochs for a similar 120 steps (README)
# (toy_text: its 4 biographies make 3 windows, one step per epoch; the models are those of the toy benchmark.
# RMU on the toy: at the paper's alpha 100 forget-MC accuracy did not move; README, "Text unlearning")
DEFAULTS = {
    "toy": dict(lr_a=1e-5, lr_b=1e-3, lr=1e-4, epochs=20, ft_epochs=16, ft_lr=3e-3, rmu_lr=3e-2, rmu_alpha=10.0),
    "tofu": dict(lr_a=1e-5, lr_b=1e-3, lr=1e-5, epochs=3, ft_epochs=5, ft_lr=1e-5, rmu_lr=5e-5, rmu_alpha=100.0),
    "toy_text": dict(lr_a=1e-5, lr_b=1e-3, lr=1e-4, epochs=100, ft_epochs=16, ft_lr=3e-3, rmu_lr=3e-2,
                     rmu_alpha=10.0, block_size=64),
    "wmdp": dict(lr_a=1e-5, lr_b=1e-3, lr=5e-5, epochs=1, ft_epochs=0, ft_lr=0.0, rmu_lr=5e-5, rmu_alpha=100.0,
                 block_size=256),
    "muse": dict(lr_a=1e-5, lr_b=1e-3, lr=1e-5, epochs=10, ft_epochs=5, ft_lr=1e-5, rmu_lr=5e-5, rmu_alpha=100.0,
                 block_size=256),
}
# The benchmark's standard models, used when neither --model nor --target is given (README, "Models"): the
# TOFU-fine-tuned Llama-3.2-1B-Instruct pair that open-unlearning publishes (its results table is the
# comparison), the paper's and WMDP's Zephyr-7B-beta, and MUSE's own target and retrained models.
MODELS = {
    "toy": dict(model="tiny"), "toy_text": dict(model="tiny"),
    "tofu": dict(target="open-unlearning/tofu_Llama-3.2-1B-Instruct_full",
                 retain_model="open-unlearning/tofu_Llama-3.2-1B-Instruct_retain{retain}"),
    "wmdp": dict(target="HuggingFaceH4/zephyr-7b-beta"),
    "muse": dict(target="muse-bench/MUSE-{corpus}_target", retain_model="muse-bench/MUSE-{corpus}_retrain"),
}
# flags that do not change what a run computes (left out of its config.json)
NOT_CONFIG = ("resume", "overwrite", "stop_after", "eval", "device", "eval_batch_size", "log_every", "out", "cache",
              "threads")
# what evaluating one record costs (evaluate.py): sequences scored, tokens generated at most
EVAL_WORK = {"perturbed": (7, 200), "holdout": (1, 0), "mc": (1, 0), "mmlu": (1, 0), "wmdp": (1, 0),
             "verbmem": (0, 128), "knowmem": (0, 32), "privleak": (1, 0), "bio": (1, 0)}


def standard_models(forget, kind):
    """{flag: checkpoint} of MODELS filled in for this forget set."""
    names = dict(retain=RETAIN_OF[forget_pct(forget)], corpus=forget.split("_")[-1].capitalize())
    return {k: v.format(**names) for k, v in MODELS[kind].items()}


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def log0(*a):
    RANK == 0 and print(*a, flush=True)


@dataclass
class Task:
    bench: str          # toy | tofu | wmdp | muse
    pct: str            # 01 | 05 | 10: which forget set (toy_text forgets the toy_forget10 people's biographies)
    text: bool          # text forgetting (every token a training position) or question-answer pairs
    kind: str           # which DEFAULTS: the bench, or toy_text
    benches: list       # what is evaluated
    out: str            # the run folder
    config: dict        # what makes the run what it is (config.json)
    corpora: dict       # text forgetting: the forget and retain corpora, loaded once
    retain_logs: dict   # the retain reference as logs, or None
    params: dict        # parameters of every checkpoint the run loads, by flag (from config.json alone)
    eval_rows: dict     # records of every evaluation split, after --eval-limit
    width: int          # n_embd of the trained model (None: unknown), for --dtype auto


def check_args(args, flags):
    """Every flag checked before any work: one message and exit code 2 for the first bad one."""
    if args.method not in METHODS:
        fail(f"unknown method {args.method!r}; valid: {', '.join(METHODS)}")
    if args.forget not in FORGETS:
        what = "a split but not a forget set" if args.forget in split_names() else "not a forget set"
        fail(f"{args.forget!r} is {what}; valid: {', '.join(FORGETS)}")
    for f in flags:
        if f.problem(getattr(args, f.dest)):
            fail(f.problem(getattr(args, f.dest)))


def plan(args, flags):
    """Check the request, fill the benchmark's defaults, check the run folder, print the plan and (preflight)
    find every split and checkpoint the run will read. Returns the Task."""
    check_args(args, flags)
    text, bench = args.forget in TEXT_FORGETS, args.forget.split("_")[0]
    pct = forget_pct(args.forget)
    kind = "toy_text" if args.forget == "toy_text" else bench
    standard = args.model is None and args.target is None
    for k, v in standard_models(args.forget, kind).items():  # (the toy's base model: always)
        if getattr(args, k) is None and (standard or k == "model") and not (k == "retain_model" and args.retain_logs):
            setattr(args, k, v)
    if args.authors and (bench != "tofu" or args.target or args.retain_model or args.retain_logs
                         or args.authors <= FORGET_AUTHORS[pct]):
        fail(f"--authors is for TOFU with target and retain models fine-tuned from --model (give --model, and no "
             f"--target, --retain-model or --retain-logs), and must exceed the {FORGET_AUTHORS[pct]} forget "
             f"authors of {args.forget}")
    if args.forget_pair is not None and not (args.forget == "tofu_forget01" and args.authors):
        fail("--forget-pair is for --forget tofu_forget01 with --authors (the target and retain models see the pair "
             "and the first retain authors, none of forget10's other authors)")
    if args.forget_pair == 9:  # forget10's last pair is forget01 itself: the same run, the same caches
        args.forget_pair = None
    args.eval_limit = args.eval_limit or args.limit
    if args.model == "tiny" and bench != "toy" and needs_model(args, bench):
        fail(f"--model tiny is the from-scratch model of the toy benchmark; for {bench}, leave --model out for "
             f"the benchmark's standard models ({', '.join(standard_models(args.forget, kind).values())}) "
             f"or give a checkpoint")
    if args.model is None and needs_model(args, bench):
        fail("the retain model is fine-tuned from --model: give --model, --retain-model or --retain-logs")
    if args.retain_logs and (text or args.retain_model):
        fail("--retain-logs holds TOFU truth ratios: for tofu_forgetXX, and not with --retain-model")
    for k, v in DEFAULTS[kind].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    out = args.out or os.path.join("out", f"{args.forget}_{args.method}")
    config = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}
    check_run_folder(out, config, args)
    benches = eval_benches(args.forget, [b for b in args.eval.split(",") if b])
    task = Task(bench, pct, text, kind, benches, out, config, {}, None, {}, {}, model_width(args))
    describe(args, bench, benches, out, standard, task.width)
    try:
        preflight(task, args)
    except HubError as e:
        fail(offline_message(args, kind, e))
    return task


def check_run_folder(out, config, args):
    """A folder holding another run is not overwritten unless asked; a finished run is not redone."""
    cfg_path = os.path.join(out, "config.json")
    if os.path.exists(cfg_path) and RANK == 0:
        old = json.load(open(cfg_path))
        if old != config and not args.overwrite:
            diff = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != v}
            fail(f"{out} holds a run with another config {diff}; pass --overwrite to replace it, or another --out")
        if old == config and not (args.resume or args.overwrite) and os.path.exists(os.path.join(out, "metrics.json")):
            fail(f"{out} already holds this finished run; pass --resume to re-evaluate it or --overwrite to redo it")
    if args.resume and not os.path.exists(os.path.join(out, "checkpoint.pt")):
        fail(f"--resume: no checkpoint in {out}")


def retain_finetuned(args, bench):
    """Whether the retain model is fine-tuned from --model (WMDP has none; MUSE with --target: logs or none)."""
    return not (args.retain_model or args.retain_logs or bench == "wmdp" or (bench == "muse" and args.target))


def has_retain_model(args, bench):
    return bool(args.retain_model) or retain_finetuned(args, bench)


def needs_model(args, bench):
    """Whether --model is used: fine-tuned into the target or the retain model, or (WMDP) the target itself."""
    return not args.target or retain_finetuned(args, bench)


def checkpoints(args, bench):
    """{flag: checkpoint} of every checkpoint the run loads (the toy's from-scratch model is none)."""
    used = ("target", "retain_model") + (("model",) if args.model != "tiny" and needs_model(args, bench) else ())
    return {f: getattr(args, f) for f in used if getattr(args, f)}


def native_bf16_cpu():
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX, from Linux's /proc/cpuinfo).
    There bf16 autocast runs matrix products about 4x faster than fp32; elsewhere it is emulated, slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# on a CPU, bf16 pays for models at least this wide: SmolLM2-135M (576) runs its forward 2.5x faster under bf16
# autocast, the toy's 128-wide model no faster (its time is the 50,257-way output layer's softmax, in fp32 either
# way; README, "Speed")
BF16_MIN_WIDTH = 512


def device_and_dtype(args, width=None):
    """The device, and the autocast dtype: --dtype, or (auto) bf16 on CUDA, and on CPUs with native bf16 for
    models of width (n_embd) >= BF16_MIN_WIDTH (None: unknown, taken as wide); else float32."""
    device = args.device if args.device != "auto" else \
        "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if args.dtype != "auto":
        return device, args.dtype
    native = device.startswith("cuda") or \
        (device == "cpu" and native_bf16_cpu() and (width is None or width >= BF16_MIN_WIDTH))
    return device, "bfloat16" if native else "float32"


def model_width(args):
    """n_embd of the model the run trains (the target, else --model) from its config.json; None if unknown."""
    name = args.target or args.model
    if name == "tiny":
        return TINY["n_embd"]
    try:
        with open(os.path.join(resolve_checkpoint(name, weights=False), "config.json")) as f:
            return config_from_hf(json.load(f))["n_embd"]
    except (OSError, ValueError, KeyError):  # not there (preflight says so next), or not a config we read
        return None


def cpu_quota():
    """CPUs a cgroup v2 quota allows this process (a container's --cpus), or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def busy_cores(seconds=0.2):
    """How many of the logical CPUs this process may use are busy now (from /proc/stat, sampled over `seconds`:
    other work, since this process is idle while it waits); 0 where that cannot be read."""
    def sample():
        with open("/proc/stat") as f:  # cpuN user nice system idle iowait irq softirq steal ...
            rows = [line.split() for line in f if line.startswith("cpu") and line[3].isdigit()]
        return {int(r[0][3:]): (sum(map(int, r[1:9])), int(r[4]) + int(r[5])) for r in rows}
    try:
        cores = os.sched_getaffinity(0)
        a = sample()
        time.sleep(seconds)
        b = sample()
    except (OSError, AttributeError, ValueError, IndexError):
        return 0
    busy = 0.0
    for c in cores & a.keys() & b.keys():
        total, idle = b[c][0] - a[c][0], b[c][1] - a[c][1]
        busy += (total - idle) / total if total > 0 else 0.0
    return round(busy)


KEPT = False  # whether keep_freed_memory took effect in this process


def glibc():
    """The C library when it is glibc (Linux), else None (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def keep_freed_memory(device="cpu"):
    """On a CPU run, have glibc's malloc keep freed memory for reuse instead of returning it to the kernel. By
    default every buffer over 32 MB (the toy's 50,257-way logits and their gradients, each step) is a fresh
    mapping, and the kernel zeroes each of its pages at first touch: on this project's machine 42,000 page
    faults per fine-tuning step of the tiny model, 247 ms a step against 167 ms with the memory kept (README,
    "Speed"). Linux with glibc only; elsewhere, and on GPU runs, nothing changes. Returns whether it did."""
    global KEPT
    libc = glibc() if device == "cpu" else None
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # malloc.h
    # large buffers from the heap, not from mmap (glibc before 2.35 caps the threshold at 32 MB: then no mmap)
    heap = mallopt(M_MMAP_THRESHOLD, 1 << 30) or mallopt(M_MMAP_MAX, 0)
    KEPT = bool(heap and mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))  # and the heap's free top kept, up to 2 GB
    return KEPT


def release_freed_memory():
    """Hand the memory kept since keep_freed_memory back to the kernel, at the end of a stage whose buffers
    the next stage does not reuse (a fine-tuning: its heap, fragmented by batches of every length, would
    otherwise stay under the evaluation's; the toy's peak 1.30 GB, 1.11-1.13 GB with this)."""
    if KEPT:
        trim = glibc().malloc_trim
        trim.argtypes = (ctypes.c_size_t,)
        trim(0)


KERNEL_CACHE = 32  # oneDNN kernels kept in memory (limit_kernel_cache); oneDNN's default is 1,024


def limit_kernel_cache(n=KERNEL_CACHE):
    """Keep at most n of oneDNN's compiled CPU kernels (it runs the bf16 matrix products) unless
    ONEDNN_PRIMITIVE_CACHE_CAPACITY is set. oneDNN compiles a kernel for every shape it meets and keeps 1,024 by
    default, each with its own memory, and batches of every length bring new shapes at every step: SmolLM2-135M's
    target fine-tuning under bf16 autocast grew every epoch to 9.0 GB, with 32 kept to 5.6 GB, the same model bit for
    bit and no slower (README, "Speed"). oneDNN reads the variable at its first kernel: call this before."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(n))


TORCH_THREADS = torch.get_num_threads()  # torch's own default (the physical cores), before any run changed it


def set_threads(args):
    """torch's CPU threads: --threads, else OMP_NUM_THREADS, else the cores not busy with other work (at least
    one; at most torch's default, the physical cores, and a container's CPU quota). A thread count above the
    free cores makes every parallel region wait for a descheduled thread: beside two other jobs on 2 cores,
    the toy's target model took 378 s with 2 threads, its retain model 101 s with 1 (README, "Speed").
    Returns (threads, why)."""
    if args.threads:
        n, why = args.threads, "--threads"
    elif os.environ.get("OMP_NUM_THREADS"):
        n, why = torch.get_num_threads(), "OMP_NUM_THREADS"
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        cores = min(cores, cpu_quota() or cores)
        n = min(cores, TORCH_THREADS)
        busy = busy_cores()
        n, why = max(1, n - busy), f"{busy} of {cores} cores busy with other work" if busy else "every core free"
    torch.set_num_threads(n)
    return n, why


def describe(args, bench, benches, out, standard, width):
    """What the run will do, as far as it is known before anything is fetched."""
    m = METHODS[args.method]
    log0(f"plan: forget {args.forget} with {args.method} ({m.about})")
    why = f"; {bench}'s standard models, README 'Models'" if standard and bench != "toy" else ""
    for flag, name in checkpoints(args, bench).items():
        where = "local" if os.path.isdir(name) else "HF hub"
        role = {"model": "base model (fine-tuned into target/retain)"}.get(flag, flag.replace("_model", ""))
        log0(f"  {role:<8} {name} ({where}{why})")
        why = ""
    if args.model == "tiny" and needs_model(args, bench):
        with torch.device("meta"):  # counted, not built
            n = GPT(GPTConfig(**TINY)).num_params()
        log0(f"  model    tiny: {n / 1e6:.1f} M parameters, trained from scratch")
    log0(f"  data     {'generated (data/toy.py)' if bench == 'toy' else args.data_dir or 'HF hub'}")
    device, dtype = device_and_dtype(args, width)
    world = int(os.environ.get("WORLD_SIZE", 1))
    threads, why = set_threads(args)
    precision = "autocast" if dtype == "bfloat16" else "full precision"
    if args.dtype == "auto" and device == "cpu":
        precision += ", the CPU has native bf16" if dtype == "bfloat16" else \
            ", no native bf16 on this CPU" if not native_bf16_cpu() else \
            f", a model {width} wide: bf16 from {BF16_MIN_WIDTH}"
    log0(f"  device   {device}, {dtype} ({precision}), {threads} CPU threads ({why})"
         + (f", {world} processes" if world > 1 else ""))
    phases = ", ".join(f"phase {p}: {n} epoch(s)" for p, n in m.phases(args) if n)
    models = "target and retain models" if has_retain_model(args, bench) or args.retain_logs else "target model"
    log0(f"  stages   {models} -> unlearning ({phases}; {args.batch_size} forget + "
         f"{args.batch_size} retain examples per step) -> evaluation ({', '.join(benches)}) -> {out}")


def offline_message(args, kind, e):
    """One message for a run that needs the HF hub and cannot reach it: what it needs, and the flags that
    make it work without the hub."""
    std = ", ".join(f"{v} ({k.replace('_model', '')})" for k, v in standard_models(args.forget, kind).items())
    return (f"{e}\n{args.forget}'s standard models are {std}; they and the benchmark files come from the HF "
            f"hub. Without the hub, give local copies:\n"
            f"  --data-dir DIR       the benchmark files, laid out as data/benchmarks.py names them\n"
            f"  --target DIR         the target checkpoint (e.g. `huggingface-cli download ID --local-dir DIR` "
            f"where there is a network)\n"
            f"  --retain-model DIR   the retain checkpoint\n"
            f"  --model DIR          or a base model, fine-tuned into the target and retain models (WMDP: the "
            f"target itself)")


def preflight(task, args):
    """Fetch and check, before any model is loaded or trained: the checkpoints' configs (their sizes), every
    split the run reads (so that a malformed file fails in seconds rather than after hours of fine-tuning),
    then the checkpoints' weights. Fills task.params, task.eval_rows, task.corpora, task.retain_logs."""
    for flag, name in checkpoints(args, task.bench).items():
        path = os.path.join(resolve_checkpoint(name, weights=False), "config.json")
        if not os.path.exists(path):
            fail(f"--{flag.replace('_', '-')} {name}: no checkpoint there (no config.json)")
        with torch.device("meta"):
            task.params[flag] = GPT(GPTConfig(**config_from_hf(json.load(open(path))))).num_params()
    if task.text and task.bench != "toy":
        task.corpora = load_corpora(args)
    pair = ["tofu_forget10", "tofu_forget10_perturbed"] if args.forget_pair is not None else []
    for name in training_splits(args.forget) + pair:
        load_split(name, args.data_dir, args.seed)
    for name in dict.fromkeys(n for b in task.benches for n in bench_splits(b, task.pct)):
        task.eval_rows[name] = len(load_split(name, args.data_dir, args.seed)[:args.eval_limit])
    if METHODS[args.method].check(args):  # the method's own checks (RMU: its layer exists)
        fail(METHODS[args.method].check(args))
    if args.retain_logs:
        from metrics import load_retain_logs
        n = len(load_split(f"{task.bench}_forget{task.pct}_perturbed", args.data_dir, args.seed))
        task.retain_logs = load_retain_logs(args.retain_logs, n, args.eval_limit, args.eval_mask)
    sizes = ", ".join(f"{k.replace('_model', '')} {v / 1e9:.2f} B parameters" for k, v in task.params.items())
    sizes and log0(f"  sizes    {sizes} ({4 * max(task.params.values()) / 1e9:.1f} GB each in float32)")
    for flag, name in checkpoints(args, task.bench).items():  # the weights: the largest downloads, now
        d = resolve_checkpoint(name)
        if not any(os.path.exists(os.path.join(d, f)) for f in WEIGHTS):
            fail(f"--{flag.replace('_', '-')} {name}: no weights in {d} (one of {', '.join(WEIGHTS)}; a partial "
                 f"download?)")

# -----------------------------------------------------------------------------
# the estimate: a few measured steps, extrapolated


def clock(fn, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.time()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.time() - t


def hms(s):
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


def estimate(task, data, examples, args, env):
    """Time and memory of every stage from measured work of the model the run trains (one training step, one
    evaluation batch, a few generated tokens, each after a warm-up); printed, never enforced. `examples`: how
    many examples each model still to be fine-tuned trains on."""
    if RANK != 0:
        return
    name = args.target or args.model
    model = GPT(GPTConfig(**TINY)) if name == "tiny" else GPT.from_pretrained(name, verbose=False)
    try:
        m = measure(model.to(env.device), data, args, env)
    except torch.cuda.OutOfMemoryError:  # a full backward may not fit where an adapter method does
        return log0("  estimate skipped: a full-parameter step of this model does not fit in GPU memory")
    finally:
        del model
        if env.device.startswith("cuda"):
            torch.cuda.empty_cache()
    P = m["params"]
    # stages: fine-tuning (examples x epochs), unlearning (steps of 2n examples), evaluation of up to 4 passes
    ft = sum(examples) * args.ft_epochs * m["step"] / (2 * m["n"])
    steps = sum(e for _, e in METHODS[args.method].phases(args)) * math.ceil(len(data.forget) / args.batch_size)
    unlearn = steps * m["step"]
    seqs = tokens = 0.0  # scored sequences, generated tokens (one sequence each)
    for split, rows in task.eval_rows.items():
        s, g = next((w for key, w in EVAL_WORK.items() if key in split), (1, 0))
        seqs, tokens = seqs + rows * s, tokens + rows * g
    passes = 2 + has_retain_model(args, task.bench) + (args.method == "alter")  # ALTER: base + adapted pass
    evals = passes * (seqs * m["seq"] + tokens * m["token"])
    full = METHODS[args.method].groups is full_groups
    retain = task.params.get("retain_model", P if retain_finetuned(args, task.bench) else 0)
    memory = m["peak"] + 8 * P * (full or ft > 0) + 4 * retain  # + AdamW state, + the retain model beside
    total = ft + unlearn + evals
    log0(f"  measured one training step of {2 * m['n']} examples {m['step']:.2f} s, {m['k']} scored sequences "
         f"{m['seq'] * m['k']:.2f} s, one new token for {m['k']} prompts {m['token'] * m['k']:.3f} s (peak memory "
         f"{m['peak'] / 1e9:.1f} GB)")
    tuning = f"fine-tuning {hms(ft)} ({sum(examples)} examples x {args.ft_epochs} epochs), " if ft else ""
    log0(f"  estimate {tuning}unlearning {hms(unlearn)} ({steps} steps), "
         f"evaluation at most {hms(evals)}: about {hms(total)} in all; memory about {memory / 1e9:.1f} GB")
    if env.device == "cpu" and total > 3600:
        log0("  on this CPU that is hours; the reduced protocol runs in about 1.3 h on 2 cores: "
             "experiments/smollm2_tofu.sh (SmolLM2-135M, 10 authors; README, 'Real model, real TOFU'), or use "
             "--limit/--eval-limit for a quick look")


def measure(model, data, args, env):
    """Seconds of one training step (forward and backward of n forget + n retain examples), of one scored
    sequence and of one generated token per sequence (at evaluation batch size, up to 8), and the peak memory."""
    n = min(args.batch_size, len(data.forget))
    train = collate(data.forget[:n] + (data.retain * n)[:n], data.pad_id, env.device)
    k = min(args.eval_batch_size, 8)
    scored = collate((data.forget * k)[:k], data.pad_id, env.device)
    prompts = torch.stack([train["x"][0, :max(1, data.forget[0][1] - 1)]] * k)
    if env.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def step():
        with env.ctx:
            model(train["x"], attention_mask=train["mask"], targets=train["y"])[1].backward()
    step()  # warm-up
    t_step = clock(step, env.device)
    model.zero_grad(set_to_none=True)
    with torch.no_grad(), env.ctx:
        t_seq = clock(lambda: model(scored["x"], attention_mask=scored["mask"]), env.device) / k
        gen = lambda n: clock(lambda: model.generate(prompts, max_new_tokens=n, eos_token_id=[]), env.device)
        gen(1)  # warm-up
        t_token = max(gen(5) - gen(1), 0.0) / (4 * k)  # the prompts' forward left out
    peak = torch.cuda.max_memory_allocated() if env.device.startswith("cuda") else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return dict(n=n, k=k, step=t_step, seq=t_seq, token=t_token, peak=peak, params=model.num_params())
