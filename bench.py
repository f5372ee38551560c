"""
Speed of our code, measured in one run on the same weights and inputs: against transformers, and each of our
methods against its plain counterpart. Every figure is printed for float32 and for bf16 autocast (float32
weights, matrix products in bf16: train.py's --dtype bfloat16, --dtype auto's choice on CUDA and, for models
at least 512 wide, on CPUs with native bf16). In the bf16 rows of inference (forward, generation, GatedLM,
multiple choice) every Linear weight is cast to bf16 once (model.linear_weights_in, as our evaluation does),
for transformers' model too, so both sides skip autocast's per-call weight casts; the step rows are plain
autocast, as train.py's training.

    python bench.py --model HuggingFaceTB/SmolLM2-135M-Instruct    # or a checkpoint directory
    python bench.py --model .cache/smollm2 --data-dir ../shared/data   # + multiple-choice questions per second
    python bench.py --shape llama-3.1-8b --device cuda --dtype bfloat16   # random weights, a real model's shape

Rows, for each precision:
  - forward time (batch x tokens), ours vs transformers' on the same weights: the --model checkpoint and a
    GPT-2-shaped model (124M, random weights unless --gpt2 names a checkpoint);
  - greedy generation tokens/s, ours vs transformers.generate;
  - ALTER at inference (alter.GatedLM, entropy gate: a base pass and the adapted pass) against the plain model
    on the same inputs: scoring (logits at the second half of every row; "base": the base pass alone) and
    greedy generation;
  - one unlearning step (forward + backward + optimizer; "fwd": the forward alone) of ALTER Phase II (exact
    isolation of A, and "alter:position", --a-grad position), plain LoRA (GradDiff), AsymLoRA and full
    fine-tuning GradDiff on the same batch, as ratios to plain LoRA, and the peak memory each step adds to the
    loaded model (CPU: resident memory sampled every millisecond, each method in its own
    process; CUDA: peak allocated memory);
  - multiple-choice questions per second (evaluate.eval_mc, lm-eval's zero-shot prompt) on MMLU and WMDP
    questions, when --data-dir holds them.
Each row's timed calls alternate for --repeats rounds and the fastest of each is reported (`timed`; on a CPU
that holds them all the step rows' processes take their steps in turn), so that the slow spells of a shared
machine fall on both sides of a ratio. transformers is only imported here and in the tests, never by the product.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import torch

from checkpoint import config_to_hf, ours_to_hf
from model import GPT, GPTConfig, linear_weights_in
from plan import keep_freed_memory, limit_kernel_cache, release_freed_memory

# random-weight models of real shapes (the published config.json values), built on the device: no download
LLAMA3_ROPE = dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
SHAPES = {
    "llama-3.2-1b": dict(vocab_size=128256, n_embd=2048, n_layer=16, n_head=32, n_kv_head=8, intermediate_size=8192,
                         tie_word_embeddings=True, rope_theta=500000.0, rope_scaling={**LLAMA3_ROPE, "factor": 32.0}),
    "llama-3.1-8b": dict(vocab_size=128256, n_embd=4096, n_layer=32, n_head=32, n_kv_head=8, intermediate_size=14336,
                         tie_word_embeddings=False, rope_theta=500000.0, rope_scaling={**LLAMA3_ROPE, "factor": 8.0}),
    "tiny": dict(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=128),  # smoke tests
}

# -----------------------------------------------------------------------------
parser = argparse.ArgumentParser(description="speed of our GPT vs transformers")
parser.add_argument("--model", default=".cache/smollm2", help="checkpoint directory or hub id")
parser.add_argument("--shape", choices=list(SHAPES), help="instead of --model: random weights of this shape")
parser.add_argument("--device", default="cpu", help="cpu | cuda | mps")
parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights dtype (bfloat16: "
                    "the bf16 rows alone)")
parser.add_argument("--precision", default="float32,bfloat16", help="comma-separated: float32 (full precision), "
                    "bfloat16 (autocast)")
parser.add_argument("--batch", type=int, default=8, help="forward batch size (sequences)")
parser.add_argument("--tokens", type=int, default=256, help="forward sequence length (tokens)")
parser.add_argument("--gen-batch", type=int, default=4, help="generation batch size (sequences)")
parser.add_argument("--gen-tokens", type=int, default=64, help="new tokens per sequence in the generation test")
parser.add_argument("--repeats", type=int, default=5, help="timed rounds (the timed calls of a row alternate); "
                    "the fastest is reported")
parser.add_argument("--step-batch", type=int, default=8, help="unlearning step: sequences (half forget, half retain)")
parser.add_argument("--step-tokens", type=int, default=64, help="unlearning step: tokens per sequence")
parser.add_argument("--mc", type=int, default=200, help="questions of each multiple-choice set to time (0: skip)")
parser.add_argument("--data-dir", default="", help="local copy of the benchmark files (the multiple-choice rows "
                                                    "are skipped without it)")
parser.add_argument("--gpt2", default="random", help="GPT-2 checkpoint for the second forward row ('random': "
                                                     "GPT-2 small's shape, random weights; 'skip')")
parser.add_argument("--step-only", default=None, help=argparse.SUPPRESS)  # internal: one method's steps (StepProcess)
args = parser.parse_args()
CUDA = args.device.startswith("cuda")
if CUDA and ":" in args.device:
    torch.cuda.set_device(args.device)  # the argument-less calls below (synchronize, memory stats) mean this GPU
# -----------------------------------------------------------------------------


def sync():
    if CUDA:
        torch.cuda.synchronize()


def timed(*fns):
    """Fastest wall time (seconds) of each fn() over --repeats rounds, after one warm-up call each. The calls
    alternate, round by round, so that a slow spell of the machine (other work on a shared host only ever slows
    a call down) falls on every side of a ratio, and the fastest call of each is the least disturbed."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for r in range(args.repeats):
        for fn, ts in list(zip(fns, times))[::1 if r % 2 == 0 else -1]:  # every other round in reverse order
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
    return [min(ts) for ts in times]


def available_memory():
    """Memory the kernel could give new work (bytes; Linux's MemAvailable), or 0 where unknown."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return 0


def rss():
    """Resident memory of this process (bytes), from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory above the level at creation, sampled every millisecond by a thread while inside a
    `with` (CPU; between the `with`s nothing is sampled)."""
    def __init__(self):
        release_freed_memory()  # what malloc kept from earlier work would otherwise be reused unseen
        self.base = self.peak = rss()

    def __enter__(self):
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss())


def autocast(precision):
    """The autocast context of a precision: bf16 autocast, or none."""
    return torch.autocast(args.device.split(":")[0], torch.bfloat16, enabled=precision == "bfloat16")


def one_step(base, method, precision):
    """A child process's work (StepProcess): set up `method`'s unlearning step, take a warm-up step (where
    gradients and AdamW state are first allocated), print "ready", then take one step per line read from stdin,
    printing [seconds, forward seconds] for each; at the end, [memory the steps added (bytes), trainable
    parameters]."""
    import torch.nn.functional as F
    from alter import AlterConfig, adapter_params, attach
    from methods import METHODS, hparams
    method, _, a_grad = method.partition(":")  # "alter:position": ALTER with --a-grad position
    B, T, V = args.step_batch, args.step_tokens, base.config.vocab_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (B, T), generator=g).to(args.device)
    y = torch.randint(0, V, (B, T), generator=g).to(args.device)
    y[:, :T // 2] = -100  # the first half is the prompt
    hp = hparams(**({"a_grad": a_grad} if a_grad else {}))
    batch = {"x": x, "y": y, "mask": torch.ones_like(x), "gate": hp.train_gate, "a_grad": hp.a_grad,
             "expert": torch.tensor([1, 2, 3, 4] * (B // 8) + [0] * (B // 2), device=args.device)}
    batch["high"] = torch.rand(B, T, generator=g).to(args.device) > 0.7
    with torch.no_grad():  # the entropy profile's top-k log-probs, as train.py reads them from its cache
        top = torch.topk(F.log_softmax(base(x)[0][y != -100].float(), -1), 32, -1)
    batch["top_logp"], batch["top_ids"] = top.values.half(), top.indices.int()
    model = base
    if method == "gd":
        params = list(model.parameters())
    else:
        attach(model, AlterConfig(n_experts=4, router=method != "lora"))
        params = [p for _, p in adapter_params(model)]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-5)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()

    def now():  # a point in time: on a GPU an event in its queue (the forward's end needs no wait), else the clock
        if not CUDA:
            return time.perf_counter()
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def step():  # as train.py's: ALTER's A gets the gradient of its high-entropy terms alone (a second backward)
        t0 = now()
        with autocast(precision):
            loss, parts = METHODS[method].loss(model, batch, 2, hp)
        t1 = now()
        opt.zero_grad(set_to_none=True)
        METHODS[method].backward(model, loss, parts, 2, hp)
        opt.step()
        t2 = now()
        if CUDA:
            t2.synchronize()
            return t0.elapsed_time(t2) / 1e3, t0.elapsed_time(t1) / 1e3
        return t2 - t0, t1 - t0  # the step, its forward

    mem = PeakRSS()
    with mem:
        step()  # warm-up
    print("ready", flush=True)
    for _ in sys.stdin:  # the parent's lines, one step each
        with mem:
            times = step()
        print(json.dumps(times), flush=True)
    added = torch.cuda.max_memory_allocated() - before if CUDA else mem.peak - mem.base
    print(json.dumps([added, sum(p.numel() for p in params)]), flush=True)


class StepProcess:
    """One method's steps in a child process of this script (--step-only): it loads the model, takes a warm-up
    step, then one step per line it reads, answering with [seconds, forward seconds]; at the end, [peak memory
    added, trainable parameters]. On failure (e.g. out of memory) .failed says why."""

    def __init__(self, method, precision):
        self.method, self.err = method, tempfile.TemporaryFile("w+")
        cmd = [sys.executable, __file__, "--step-only", method, "--precision", precision] + child_argv()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True)
        self.times, self.failed = [], None
        while (line := self._read()) and line.strip() != "ready":  # after the model's loading
            pass

    def _read(self):
        line = self.proc.stdout.readline() if not self.failed else ""
        if not line and not self.failed:
            self.proc.wait()
            self.err.seek(0)
            tail = self.err.read().strip()
            print(f"the {self.method} step failed:\n{tail[-2000:]}", file=sys.stderr)
            self.failed = tail.splitlines()[-1][:34] if tail else f"exit {self.proc.returncode}"
        return line

    def _answer(self):
        """The child's next JSON line; any other line it printed goes to stderr."""
        line = self._read()
        while line and not line.startswith("["):
            print(f"({self.method} step) {line.rstrip()}", file=sys.stderr)
            line = self._read()
        return json.loads(line) if line else None

    def step(self):
        if not self.failed:
            try:
                self.proc.stdin.write("step\n")
                self.proc.stdin.flush()
            except BrokenPipeError:  # it died: _read says why
                pass
            times = self._answer()
            if times:
                self.times.append(times)

    def finish(self):
        if not self.failed:
            self.proc.stdin.close()
            answer = self._answer()
            if answer:
                self.added, self.n = answer
                self.proc.wait()
        return self


def child_argv():
    """This run's flags without --step-only and --precision (and their values): the step processes get their own."""
    out, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a in ("--step-only", "--precision"):
            skip = True
        elif not a.startswith(("--step-only=", "--precision=")):
            out.append(a)
    return out


def step_rows(precision, weight_bytes):
    """One unlearning step per method, each method in its own process (so one method's freed memory cannot hide
    the next one's peak); ratios to plain LoRA. On a CPU whose free memory holds the five processes at once
    (30 x the weights: SmolLM2-135M's five took 23 x its weights at 8 x 64 tokens, most of it activations and
    GradDiff's gradients and AdamW state), they take their steps in turn, round by round, so the machine's drift
    moves all alike; else (a GPU, a large model) one after the other. Which of the two is said on stderr."""
    methods = ("lora", "alter", "alter:position", "asymlora", "gd")
    in_turn = args.device == "cpu" and 30 * weight_bytes < available_memory()
    print(f"unlearning steps ({precision}): {len(methods)} processes, "
          f"{'taking turns' if in_turn else 'one after the other'}, {args.repeats} steps each", file=sys.stderr)
    procs = []
    for group in [methods] if in_turn else [[m] for m in methods]:  # the processes alive at once
        live = [StepProcess(m, precision) for m in group]
        for r in range(args.repeats):
            for p in live[::1 if r % 2 == 0 else -1]:  # every other round in reverse order
                p.step()
        procs += [p.finish() for p in live]
    best = [min(p.times) if not p.failed else None for p in procs]  # the fastest step, and that step's forward
    rows = []
    for m, p, t in zip(methods, procs, best):
        what = f"unlearning step {m} ({args.step_batch}x{args.step_tokens})"
        if p.failed:
            rows.append((what, "failed", p.failed, ""))
            continue
        ratio = f"{t[0] / best[0][0]:.2f}x plain LoRA" if best[0] else ""
        rows.append((what, f"{t[0] * 1e3:.0f} ms, fwd {t[1] * 1e3:.0f}",
                     f"peak +{p.added / 2**20:.0f} MiB ({p.n / 1e6:.2f}M trained)", ratio))
    return rows


def forward_row(ours, theirs, name):
    idx = torch.randint(0, ours.config.vocab_size, (args.batch, args.tokens), device=args.device)
    with torch.no_grad():
        t_ours, t_hf = timed(lambda: ours(idx), lambda: theirs(idx))
    n = args.batch * args.tokens
    return (f"forward {name} {args.batch}x{args.tokens} tokens", f"{t_ours * 1e3:.0f} ms, {n / t_ours:.0f} tok/s",
            f"{t_hf * 1e3:.0f} ms, {n / t_hf:.0f} tok/s", f"{t_ours / t_hf:.2f} (time, lower is better)")


def generation_row(ours, theirs):
    prompt = torch.randint(0, ours.config.vocab_size, (args.gen_batch, 32), device=args.device)
    n = args.gen_batch * args.gen_tokens
    theirs.generation_config.eos_token_id = None  # both sides generate exactly gen_tokens
    t_ours, t_hf = timed(lambda: ours.generate(prompt, max_new_tokens=args.gen_tokens, eos_token_id=[]),
                         lambda: theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                                 max_new_tokens=args.gen_tokens, pad_token_id=0))
    return (f"greedy generation {args.gen_batch}x{args.gen_tokens} new tokens", f"{n / t_ours:.0f} tok/s",
            f"{n / t_hf:.0f} tok/s", f"{t_hf / t_ours:.2f} (speed, higher is better)")


def gated_rows(ours):
    """ALTER at inference (GatedLM, entropy gate, a fresh 4-expert adapter) against the plain model."""
    import copy
    from alter import AlterConfig, GatedLM, attach
    adapted = copy.deepcopy(ours)
    attach(adapted, AlterConfig(n_experts=4))
    gated = GatedLM(adapted, q=1.5, theta=1.2)
    idx = torch.randint(0, ours.config.vocab_size, (args.batch, args.tokens), device=args.device)
    keep = torch.zeros_like(idx, dtype=torch.bool)
    keep[:, args.tokens // 2:] = True  # the answers' half of every row, as inference.token_logps reads them
    with torch.no_grad():
        t_plain, t_gated, t_base = timed(lambda: ours(idx, keep=keep), lambda: gated(idx, keep=keep),
                                         lambda: gated.high_entropy(idx))  # the base pass: S_q at every position
    prompt = idx[:args.gen_batch, :32]
    n = args.gen_batch * args.gen_tokens
    g_plain, g_gated = timed(lambda: ours.generate(prompt, max_new_tokens=args.gen_tokens, eos_token_id=[]),
                             lambda: gated.generate(prompt, max_new_tokens=args.gen_tokens, eos_token_id=[]))
    return [(f"ALTER scoring (GatedLM) {args.batch}x{args.tokens}", f"{t_gated * 1e3:.0f} ms, base {t_base * 1e3:.0f}",
             f"plain model {t_plain * 1e3:.0f} ms", f"{t_gated / t_plain:.2f}x plain (time)"),
            (f"ALTER generation (GatedLM) {args.gen_batch}x{args.gen_tokens}", f"{n / g_gated:.0f} tok/s",
             f"plain model {n / g_plain:.0f} tok/s", f"{g_gated / g_plain:.2f}x plain (time)")]


def mc_rows(ours):
    """Questions per second of evaluate.eval_mc (zero-shot) on the first --mc questions of MMLU (its first
    subjects) and of WMDP bio and cyber (long code prompts)."""
    from data.benchmarks import load_split
    from evaluate import eval_mc, mc_prompt
    from tokenizer import Tokenizer
    tok = Tokenizer.from_pretrained(ours.source)
    rows = []
    eval_mc(ours, tok, load_split("mmlu_dev", args.data_dir)[:8], batch_size=32, device=args.device)  # warm-up
    for split in ("mmlu_test", "wmdp_bio", "wmdp_cyber"):
        qs = load_split(split, args.data_dir)[:args.mc]
        t0 = time.perf_counter()
        eval_mc(ours, tok, qs, batch_size=32, device=args.device, desc=split)
        t = time.perf_counter() - t0
        n_tok = sum(len(tok.encode(mc_prompt(q))) for q in qs) / len(qs)
        rows.append((f"multiple choice {split}, first {len(qs)}", f"{len(qs) / t:.1f} q/s",
                     f"{t:.1f} s (prompts {n_tok:.0f} tokens on average)", ""))
    return rows


def load_ours(dtype):
    """The --model checkpoint, or a random-weight model of --shape made on the device in `dtype`."""
    if not args.shape:
        return GPT.from_pretrained(args.model, dtype=dtype, verbose=not args.step_only).to(args.device).eval()
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(args.device):
        model = GPT(GPTConfig(arch="llama", block_size=131072, **SHAPES[args.shape]))
    torch.set_default_dtype(default)
    model.source = None
    return model.eval()


def load_theirs(ours, dtype):
    """transformers' model with the same weights: loaded from the checkpoint, or (--shape) built from our
    config and given our tensors."""
    import transformers
    if not args.shape:
        return transformers.AutoModelForCausalLM.from_pretrained(ours.source, dtype=dtype).to(args.device).eval()
    hf = config_to_hf(ours.config)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # rather than from_config's dtype argument, whose name changed across versions
    with torch.device(args.device):
        theirs = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf))
    torch.set_default_dtype(default)
    theirs.load_state_dict({ours_to_hf(k, "llama"): v for k, v in ours.state_dict().items()})  # strict: every key
    return theirs.eval()


def gpt2_row(dtype, precision):
    """The forward row for a GPT-2-shaped model: a checkpoint, or GPT-2 small's shape with random weights
    written to a temporary directory (the same files feed both implementations)."""
    import transformers
    from model import GPTConfig
    with tempfile.TemporaryDirectory() as d:
        path = args.gpt2
        if path == "random":
            torch.manual_seed(0)
            GPT(GPTConfig(arch="gpt2", vocab_size=50257, block_size=1024, n_layer=12, n_head=12,
                          n_embd=768)).save_pretrained(d)
            path = d
        ours = GPT.from_pretrained(path, dtype=dtype, verbose=False).to(args.device).eval()
        theirs = transformers.AutoModelForCausalLM.from_pretrained(ours.source, dtype=dtype).to(args.device).eval()
        name = "GPT-2 124M" + (" (random weights)" if args.gpt2 == "random" else f" ({args.gpt2})")
        with linear_weights_in(ours, precision), linear_weights_in(theirs, precision):
            return forward_row(ours, theirs, name)


def main():
    keep_freed_memory(args.device)  # as train.py and evaluate.py run (ours and transformers alike)
    limit_kernel_cache()
    dtype = getattr(torch, args.dtype)
    precisions = [p for p in args.precision.split(",") if p]
    assert set(precisions) <= {"float32", "bfloat16"}, f"--precision: float32 and/or bfloat16, got {args.precision}"
    if args.dtype == "bfloat16":
        precisions = ["bfloat16"]  # bf16 weights: autocast to fp32 is not a mode anyone runs
    torch.manual_seed(0)
    ours = load_ours(dtype)
    if args.step_only:  # a child process of step_rows (StepProcess): one method's steps
        return one_step(ours, args.step_only, args.precision)
    import transformers
    theirs = load_theirs(ours, dtype)
    name = f"{args.shape} (random weights)" if args.shape else os.path.basename(args.model.rstrip("/"))
    rows = {p: [] for p in precisions}
    for p in precisions:  # both implementations under the same autocast, each Linear weight cast once
        with autocast(p), linear_weights_in(ours, p), linear_weights_in(theirs, p):
            rows[p].append(forward_row(ours, theirs, name))
            if args.gpt2 != "skip":
                rows[p].append(gpt2_row(dtype, p))
            rows[p].append(generation_row(ours, theirs))
            rows[p] += gated_rows(ours)
    theirs = None  # freed
    weight_bytes = sum(t.numel() * t.element_size() for t in ours.parameters())
    if args.shape:
        ours = None  # random weights: nothing below needs them, and the step processes need the memory
    if CUDA:
        torch.cuda.empty_cache()  # the step processes need the memory
    for p in precisions:
        rows[p] += step_rows(p, weight_bytes)
    if args.mc and os.path.isdir(args.data_dir) and not args.shape:
        for p in precisions:
            with autocast(p), linear_weights_in(ours, p):
                rows[p] += mc_rows(ours)
    dev = torch.cuda.get_device_name() if CUDA else f"CPU, {torch.get_num_threads()} threads"
    for p in precisions:
        what = "bf16 autocast" if p == "bfloat16" and args.dtype == "float32" else p
        print(f"\n{name} | {args.dtype} weights, {what} | {dev} | torch {torch.__version__}, "
              f"transformers {transformers.__version__}")
        print(f"| {'what':<52} | {'ours':>22} | {'transformers / memory / plain':>34} | ratio")
        print(f"|{'-' * 54}|{'-' * 24}|{'-' * 36}|{'-' * 30}")
        for what, a, b, r in rows[p]:
            print(f"| {what:<52} | {a:>22} | {b:>34} | {r}")


if __name__ == "__main__":
    main()
