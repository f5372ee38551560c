"""
Speed of our model against transformers, measured in one run on the same weights and inputs.

    python bench.py --model .cache/smollm2            # SmolLM2-135M (make it with ../shared/tools/smollm2_to_hf.py)
    python bench.py --model .cache/smollm2 --device cuda

Prints one table, each figure measured in this run:
  - forward time (batch x tokens) and greedy generation tokens/s, ours vs transformers' on the same weights;
  - one unlearning step (forward + backward + optimizer) of ALTER Phase II, plain LoRA (GradDiff), AsymLoRA
    and full fine-tuning GradDiff on the same batch, as ratios to plain LoRA, with the memory each needs for
    trainable weights, gradients and AdamW state (and the peak allocated memory on CUDA);
  - MMLU questions per second (zero-shot, when ../shared/data is there).
transformers is only imported here and in the tests, never by the product.
"""
import argparse
import os
import time

import torch

from model import GPT

# -----------------------------------------------------------------------------
parser = argparse.ArgumentParser(description="speed of our GPT vs transformers")
parser.add_argument("--model", default=".cache/smollm2", help="checkpoint directory or hub id")
parser.add_argument("--device", default="cpu", help="cpu | cuda | mps")
parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights dtype")
parser.add_argument("--batch", type=int, default=8, help="forward batch size (sequences)")
parser.add_argument("--tokens", type=int, default=256, help="forward sequence length (tokens)")
parser.add_argument("--gen-batch", type=int, default=4, help="generation batch size (sequences)")
parser.add_argument("--gen-tokens", type=int, default=64, help="new tokens per sequence in the generation test")
parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
parser.add_argument("--step-batch", type=int, default=8, help="unlearning step: sequences (half forget, half retain)")
parser.add_argument("--step-tokens", type=int, default=64, help="unlearning step: tokens per sequence")
parser.add_argument("--mmlu", type=int, default=256, help="MMLU questions to time (0: skip)")
parser.add_argument("--data-dir", default="../shared/data", help="local mirror with MMLU (skipped if absent)")
args = parser.parse_args()
# -----------------------------------------------------------------------------


def timed(fn, repeats):
    """Median wall time of fn() over `repeats` calls, after one warm-up call (seconds)."""
    fn()
    times = []
    for _ in range(repeats):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def step_rows(base):
    """Time one unlearning step of each method on the same batch; ratios to plain LoRA."""
    import copy
    import torch.nn.functional as F
    from alter import AlterConfig, LossWeights, adapter_params, attach, method_loss
    B, T, V = args.step_batch, args.step_tokens, base.config.vocab_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (B, T), generator=g).to(args.device)
    y = torch.randint(0, V, (B, T), generator=g).to(args.device)
    y[:, :T // 2] = -100  # the first half is the prompt
    batch = {"x": x, "y": y, "mask": torch.ones_like(x), "gate": "teacher",
             "expert": torch.tensor([1, 2, 3, 4] * (B // 8) + [0] * (B // 2), device=args.device)}
    batch["high"] = torch.rand(B, T, generator=g).to(args.device) > 0.7
    with torch.no_grad():  # the entropy profile's top-k log-probs, as train.py reads them from its cache
        top = torch.topk(F.log_softmax(base(x)[0][y != -100].float(), -1), 32, -1)
    batch["top_logp"], batch["top_ids"] = top.values.half(), top.indices.int()
    times, rows = {}, []
    for method in ("lora", "alter", "asymlora", "gd"):
        model = copy.deepcopy(base)
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
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def step():
            loss, _ = method_loss(method, 2, model, batch, LossWeights())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times[method] = timed(step, args.repeats)
        n = sum(p.numel() for p in params)
        mem = f"{n * 16 / 2**20:.0f} MiB train state"  # fp32 weight + grad + 2 AdamW moments = 16 bytes each
        if args.device == "cuda":
            mem += f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
        rows.append((f"unlearning step {method} ({B}x{T})", f"{times[method] * 1e3:.0f} ms", mem,
                     f"{times[method] / times['lora']:.2f}x plain LoRA"))
        del model, opt
    return rows


def main():
    import transformers
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    ours = GPT.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(ours.source, dtype=dtype).to(args.device).eval()
    V = ours.config.vocab_size
    rows = []

    idx = torch.randint(0, V, (args.batch, args.tokens), device=args.device)
    with torch.no_grad():
        t_ours = timed(lambda: ours(idx), args.repeats)
        t_hf = timed(lambda: theirs(idx), args.repeats)
    rows.append((f"forward {args.batch}x{args.tokens} tokens", f"{t_ours * 1e3:.0f} ms", f"{t_hf * 1e3:.0f} ms",
                 f"{t_ours / t_hf:.2f} (time, lower is better)"))

    prompt = torch.randint(0, V, (args.gen_batch, 32), device=args.device)
    n = args.gen_batch * args.gen_tokens
    theirs.generation_config.eos_token_id = None  # both sides generate exactly gen_tokens
    t_ours = timed(lambda: ours.generate(prompt, max_new_tokens=args.gen_tokens, eos_token_id=[]), args.repeats)
    t_hf = timed(lambda: theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                         max_new_tokens=args.gen_tokens, pad_token_id=0), args.repeats)
    rows.append((f"greedy generation {args.gen_batch}x{args.gen_tokens} new tokens", f"{n / t_ours:.0f} tok/s",
                 f"{n / t_hf:.0f} tok/s", f"{t_hf / t_ours:.2f} (speed, higher is better)"))

    rows += step_rows(ours)
    if args.mmlu and os.path.isdir(args.data_dir):
        from data.benchmarks import load_split
        from evaluate import eval_mc
        from tokenizer import Tokenizer
        tok = Tokenizer.from_pretrained(ours.source)
        qs = load_split("mmlu_test", args.data_dir)[:args.mmlu]
        t = timed(lambda: eval_mc(ours, tok, qs, batch_size=16, device=args.device), 1)
        rows.append((f"MMLU zero-shot, {len(qs)} questions, batch 16", f"{len(qs) / t:.1f} q/s", "", ""))
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{args.model} | {args.dtype} | {dev} | torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"| {'what':<44} | {'ours':>12} | {'transformers / memory':>34} | ratio")
    print(f"|{'-' * 46}|{'-' * 14}|{'-' * 36}|{'-' * 30}")
    for what, a, b, r in rows:
        print(f"| {what:<44} | {a:>12} | {b:>34} | {r}")


if __name__ == "__main__":
    main()
