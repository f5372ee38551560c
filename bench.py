"""
Speed of our model against transformers, measured in one run on the same weights and inputs.

    python bench.py --model .cache/smollm2            # SmolLM2-135M (make it with ../shared/tools/smollm2_to_hf.py)
    python bench.py --model .cache/smollm2 --device cuda

Prints one table: forward time (batch x tokens, fp32 by default) and greedy generation tokens/s, ours and
transformers', with their ratio. transformers is only imported here and in the tests, never by the product.
"""
import argparse
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

    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{args.model} | {args.dtype} | {dev} | torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"| {'what':<40} | {'ours':>12} | {'transformers':>12} | ratio ours/theirs")
    print(f"|{'-' * 42}|{'-' * 14}|{'-' * 14}|{'-' * 30}")
    for what, a, b, r in rows:
        print(f"| {what:<40} | {a:>12} | {b:>12} | {r}")


if __name__ == "__main__":
    main()
