"""
The target and retain models of a run, when they are not given: --model fine-tuned on the benchmark's full
training data (the target) or on its retain data (the retain model), once; later runs load them from the cache.
"""
import hashlib
import json
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.batching import batch_indices, collate
from data.forget_sets import training_examples
from model import GPT, TINY, GPTConfig
from plan import release_freed_memory


def main_process():
    """Whether this process caches and logs (the only one, or rank 0 under torchrun)."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def cached_finetune(name, bench, which, tok, args, env, log=print):
    """Fine-tune --model on a corpus once; later runs load it from the cache. The cache key hashes the model,
    the token ids of every training example (so the data source, --limit/--authors, the prompt format and
    system prompt) and every fine-tuning setting."""
    path, examples = cache_path(bench, which, tok, args, env)
    if main_process() and not os.path.exists(os.path.join(path, "config.json")):
        torch.manual_seed(args.seed)
        model = GPT(GPTConfig(**TINY)) if args.model == "tiny" else GPT.from_pretrained(args.model)
        log(f"fine-tuning the {name} model on {bench}_{which}: {len(examples)} examples, "
            f"{sum(len(e[0]) for e in examples)} tokens, {args.ft_epochs} epochs")
        finetune(model.to(env.device), examples, args, env, name, log)
        model.save_pretrained(path + ".tmp")  # complete before it is visible: a killed run leaves no half model
        os.replace(path + ".tmp", path)
        del model
        release_freed_memory()
    if torch.distributed.is_initialized():  # the other processes wait for it
        torch.distributed.barrier()
    return GPT.from_pretrained(path, verbose=False).to(env.device).eval()


def cache_path(bench, which, tok, args, env):
    """(where the fine-tuned model is cached, the examples it is fine-tuned on)."""
    examples = training_examples(bench, which, tok, args)
    key = settings_key(model_id(args.model), examples, args.ft_epochs, args.ft_lr, args.ft_batch_size, args.seed,
                       env.dtype)
    return os.path.join(args.cache, f"{bench}-{which}-{os.path.basename(args.model.rstrip('/'))}-{key}"), examples


def finetune(model, examples, args, env, desc, log=print):
    """Plain next-token fine-tuning (labelled positions only), AdamW, 1 epoch linear warm-up then linear
    decay, gradient norm clipped to 1 (open-unlearning's schedule, HF Trainer's clipping). The output layer
    runs only where there is a label: the 50k-way projection dominates the cost of a small model."""
    epochs, lr, batch_size = args.ft_epochs, args.ft_lr, args.ft_batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    per_epoch = len(batch_indices(len(examples), batch_size))
    total, step, t0 = epochs * per_epoch, 0, time.time()
    model.train()
    for epoch in range(epochs):
        for idx in tqdm(batch_indices(len(examples), batch_size, args.seed, epoch), desc=f"{desc} epoch {epoch + 1}",
                        leave=False, disable=None):
            for g in opt.param_groups:
                g["lr"] = lr * min((step + 1) / per_epoch, (total - step) / max(1, total - per_epoch))
            b = collate([examples[i] for i in idx], 0, env.device)
            with env.ctx:
                h = model(b["x"], attention_mask=b["mask"], hidden_only=True)
                lab = b["y"] != -100
                loss = F.cross_entropy(model.lm_head(h[lab]).float(), b["y"][lab])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as HF Trainer (max_grad_norm 1.0)
            opt.step()
            step += 1
        log(f"{desc} epoch {epoch + 1}/{epochs} | loss {loss.item():.3f} | {time.time() - t0:.0f} s")
    model.eval()
    return model


def settings_key(*settings):
    """A short hash of everything that makes a cached artifact what it is."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def model_id(name):
    """A checkpoint's identity for cache keys: the absolute path of a local directory, else the hub id."""
    return os.path.abspath(name) if os.path.isdir(name) else name
