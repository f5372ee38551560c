"""
A from-scratch GPT that loads GPT-2 and Llama-family checkpoints exactly.

Read top to bottom: the parts (norms, rotary embeddings, attention, MLP, block), then GPTConfig, then GPT
with its loader (`GPT.from_pretrained`) and KV-cache generation. One class covers both families by config
switches:

    GPT-2  (arch="gpt2"):  learned positions, LayerNorm with bias, GELU (tanh), fused c_attn, tied lm_head
    Llama  (arch="llama"): RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases, tied or untied head
                           (Llama-2/3.x, SmolLM2, Mistral/Zephyr with its sliding window)

Module names follow the HF checkpoints of each family (c_attn / q_proj, c_fc / gate_proj ...) so the key
map (`checkpoint.hf_to_ours`) is a handful of string replacements and the adapters in alter.py can name their
sites. The forward pass returns logits at every position, or at the positions named by `keep` alone.
"""
import json
import math
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoint import (CONV1D_WEIGHTS, TOKENIZER_FILES, config_from_hf, config_to_hf, hf_to_ours,
                        load_checkpoint_tensors, ours_to_hf, resolve_checkpoint, write_safetensors)

# -----------------------------------------------------------------------------
# parts


class RMSNorm(nn.Module):
    """Llama's norm: x / rms(x) * weight, computed in fp32 as the reference implementation does."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_inv_freq(head_dim, theta, scaling=None):
    """Inverse frequencies of rotary embeddings, (head_dim/2,). `scaling` is Llama-3's rope_scaling dict."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if scaling is None:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return inv_freq
    assert kind == "llama3", f"unsupported rope_scaling type {kind!r} (supported: llama3)"
    # Llama-3.1: long wavelengths are slowed down by `factor`, short ones kept, the band between interpolated
    factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
    return torch.where(medium, smoothed, scaled)


def apply_rope(x, cos, sin):
    """Rotate pairs (i, i + hs/2) of x (B, nh, T, hs) by the angles in cos/sin (B, 1, T, hs)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        C, hs = config.n_embd, config.head_dim
        if config.arch == "gpt2":
            self.c_attn = nn.Linear(C, 3 * C, bias=True)  # fused q, k, v
            self.c_proj = nn.Linear(C, C, bias=True)
        else:
            bias = config.attention_bias
            self.q_proj = nn.Linear(C, self.n_head * hs, bias=bias)
            self.k_proj = nn.Linear(C, self.n_kv_head * hs, bias=bias)
            self.v_proj = nn.Linear(C, self.n_kv_head * hs, bias=bias)
            self.o_proj = nn.Linear(self.n_head * hs, C, bias=bias)

    def forward(self, x, rope, mask, cache):
        B, T, C = x.size()
        hs = self.head_dim
        if hasattr(self, "c_attn"):
            q, k, v = self.c_attn(x).split(C, dim=2)
            out_proj = self.c_proj
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
            out_proj = self.o_proj
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:  # the keys and values of the earlier positions, and these appended
            k, v = cache.append(k, v)
        # grouped-query attention: each kv head serves n_head/n_kv_head query heads. Without a gradient SDPA reads
        # the shared heads in place (on a CPU the same outputs bit for bit, without copying the keys and values
        # n_head / n_kv_head times); with one they are repeated, whose backward sums each kv head's gradient in a fixed
        # order (SDPA's own sums it in another, which would move trained weights in their last bits)
        gqa = self.n_kv_head != self.n_head
        if gqa and torch.is_grad_enabled():
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # (B, nh, S, hs)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            gqa = False
        # mask: (B, 1, T, S) bool, or None for SDPA's own causal mask
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=gqa)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * hs)  # (B, T, nh*hs)
        return out_proj(y)


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        C, H = config.n_embd, config.intermediate_size
        if config.arch == "gpt2":
            self.c_fc = nn.Linear(C, H, bias=True)
            self.c_proj = nn.Linear(H, C, bias=True)
        else:
            self.gate_proj = nn.Linear(C, H, bias=config.mlp_bias)
            self.up_proj = nn.Linear(C, H, bias=config.mlp_bias)
            self.down_proj = nn.Linear(H, C, bias=config.mlp_bias)

    def forward(self, x):
        if hasattr(self, "c_fc"):
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's "gelu_new"
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class KVCache:
    """One block's keys and values of the positions seen so far, (B, n_kv_head, n, hs) each, in buffers with room
    to grow: a decoding step writes its position in place, where concatenating would copy the whole cache at
    every step (SmolLM2 at batch 32 and 300 positions, bf16: 7.4 MB a block, 221 MB read and written a step,
    more traffic than the 270 MB of weights the step reads)."""
    ROOM = 64  # spare positions added when full

    def __init__(self):
        self.k = self.v = None
        self.n = 0  # positions filled

    def append(self, k, v):
        """Store k, v (B, n_kv_head, T, hs) after the filled positions; returns all keys and values so far."""
        n, T = self.n, k.size(2)
        assert self.k is None or (k.shape[:2], k.dtype, v.dtype) == (self.k.shape[:2], self.k.dtype, self.v.dtype), \
            "a cache holds one batch of one dtype"
        if self.k is None or n + T > self.k.size(2):  # larger buffers, the filled positions copied over
            size = (*k.shape[:2], n + T + self.ROOM, k.size(3))
            k_buf, v_buf = k.new_empty(size), v.new_empty(size)
            if n:
                k_buf[:, :, :n], v_buf[:, :, :n] = self.k[:, :, :n], self.v[:, :, :n]
            self.k, self.v = k_buf, v_buf
        self.k[:, :, n:n + T], self.v[:, :, n:n + T] = k, v
        self.n = n + T
        return self.k[:, :, :self.n], self.v[:, :, :self.n]


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        Norm = (lambda d: nn.LayerNorm(d, eps=config.norm_eps)) if config.arch == "gpt2" else \
            (lambda d: RMSNorm(d, eps=config.norm_eps))
        self.ln_1 = Norm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = Norm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, mask=None, cache=None):
        x = x + self.attn(self.ln_1(x), rope, mask, cache)
        x = x + self.mlp(self.ln_2(x))
        return x

# -----------------------------------------------------------------------------
# config


@dataclass
class GPTConfig:
    arch: str = "gpt2"            # "gpt2" (learned positions, LayerNorm, GELU) or "llama" (RoPE, RMSNorm, SwiGLU)
    vocab_size: int = 50257       # rows of the embedding and of lm_head
    block_size: int = 1024        # maximum sequence length (GPT-2: learned positions; Llama: informational)
    n_layer: int = 12             # transformer blocks
    n_head: int = 12              # query heads
    n_kv_head: int = 0            # key/value heads (grouped-query attention); 0 means n_head
    n_embd: int = 768             # residual stream width
    head_dim: int = 0             # width of one head; 0 means n_embd // n_head
    intermediate_size: int = 0    # MLP hidden width; 0 means 4 * n_embd
    norm_eps: float = 1e-5        # LayerNorm / RMSNorm epsilon
    rope_theta: float = 10000.0   # RoPE base (Llama only)
    rope_scaling: dict = None     # Llama-3.1 style rope_scaling dict, or None
    attention_bias: bool = False  # biases on q/k/v/o (Llama only; GPT-2 always has them)
    mlp_bias: bool = False        # biases on the SwiGLU projections (Llama only)
    tie_word_embeddings: bool = True  # lm_head shares the token embedding matrix
    sliding_window: int = None    # Mistral: a query sees only the last N positions (itself included)
    bos_token_id: int = None      # from the checkpoint's config.json, informational
    eos_token_id: list = field(default_factory=list)  # token ids that end generation

    def __post_init__(self):
        assert self.arch in ("gpt2", "llama"), f"arch must be 'gpt2' or 'llama', got {self.arch!r}"
        self.n_kv_head = self.n_kv_head or self.n_head
        self.head_dim = self.head_dim or self.n_embd // self.n_head
        self.intermediate_size = self.intermediate_size or 4 * self.n_embd
        assert self.n_head % self.n_kv_head == 0, f"n_head {self.n_head} not divisible by n_kv_head {self.n_kv_head}"
        if isinstance(self.eos_token_id, int):
            self.eos_token_id = [self.eos_token_id]
        self.eos_token_id = list(self.eos_token_id or [])


# the from-scratch model of the offline toy benchmark (GPT-2 vocabulary so the shipped tokenizer serves it)
TINY = dict(arch="gpt2", vocab_size=50257, block_size=256, n_layer=4, n_head=4, n_embd=128, eos_token_id=[50256])

@contextmanager
def linear_weights_in(model, dtype):
    """For no-grad work under autocast to `dtype` (evaluation): every nn.Linear's float32 weight cast once, for
    the scope of the `with`, instead of at every call. Autocast caches a cast only for weights that require
    grad, so a frozen model's weights were cast again at every forward (every generated token: the output
    layer's 50,257 x C each time). The same casts autocast makes, so the same results; only under autocast (a
    bf16 weight meets fp32 activations otherwise). Inside, a tied output layer is untied. float32: nothing."""
    saved = []
    try:
        if dtype in ("bfloat16", torch.bfloat16):
            for m in model.modules():
                if isinstance(m, nn.Linear) and m.weight.dtype == torch.float32:
                    saved.append((m, m.weight))
                    m.weight = nn.Parameter(m.weight.detach().to(torch.bfloat16), requires_grad=False)
        yield model
    finally:
        for m, w in saved:
            m.weight = w

# -----------------------------------------------------------------------------
# the model


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        parts = dict(wte=nn.Embedding(config.vocab_size, config.n_embd),
                     h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                     ln_f=nn.LayerNorm(config.n_embd, eps=config.norm_eps) if config.arch == "gpt2"
                     else RMSNorm(config.n_embd, eps=config.norm_eps))
        if config.arch == "gpt2":
            parts["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(parts)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        if config.arch == "llama":
            inv_freq = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)
            self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module):  # GPT-2's init, for models trained from scratch
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, attention_mask=None, targets=None, cache=None, hidden_only=False, position_ids=None,
                keep=None):
        """idx (B, T) token ids; attention_mask (B, S) with 1 for real tokens, S = cached + T (optional);
        targets (B, T) with -100 for ignored positions (optional). Returns logits (B, T, V) and the mean
        cross-entropy (or None). keep, an index of the (B, T) positions (a bool mask, or e.g.
        (slice(None), -1) for each row's last), computes the output layer there alone: logits x[keep] (n, V),
        loss over targets[keep]; the (B, T, V) logits of a large vocabulary are most of a small model's time
        and memory where only a few positions are read. `cache` (from new_cache) holds a KVCache per block,
        extended in place.
        position_ids (B, T), optional, replace the positions derived from the mask (transformers' forward
        without them uses 0..T-1 whatever the mask)."""
        B, T = idx.size()
        past = 0 if cache is None else cache[0].n
        causal = torch.ones(T, past + T, dtype=torch.bool, device=idx.device).tril(past)  # (T, S): j <= past + i
        window = self.config.sliding_window
        windowed = bool(window) and past + T > window
        if windowed:  # Mistral: and j > past + i - window
            causal &= ~causal.tril(past - window)
        if attention_mask is None:
            pos = torch.arange(past, past + T, device=idx.device).expand(B, T)
            mask = None if past == 0 and not windowed else causal[None, None]  # None: SDPA's own causal mask
        else:
            # positions count real tokens only, so a left-padded row behaves as if it were not padded
            am = attention_mask.bool()
            pos = (am.long().cumsum(-1) - 1).clamp(min=0)[:, past:]  # (B, T)
            mask = causal[None] & am[:, None, :]  # (B, T, S)
            # a masked key is hidden from its own query too (as in transformers); only a query that would see
            # nothing (leading padding) sees itself, so attention never has an empty row
            blind = ~mask.any(-1, keepdim=True)  # (B, T, 1)
            mask |= blind & (causal & ~causal.tril(past - 1))[None]
            mask = mask[:, None]  # (B, 1, T, S)
        if position_ids is not None:
            pos = position_ids.expand(B, T)
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.arch == "gpt2":
            assert past + T <= self.config.block_size, \
                f"sequence length {past + T} > block_size {self.config.block_size}"
            x = x + self.transformer.wpe(pos)
        else:
            freqs = pos[:, :, None].float() * self.inv_freq[None, None, :]  # (B, T, hs/2)
            emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, hs)
            rope = (emb.cos().to(x.dtype), emb.sin().to(x.dtype))
        for i, block in enumerate(self.transformer.h):
            x = block(x, rope, mask, None if cache is None else cache[i])
        x = self.transformer.ln_f(x)
        if hidden_only:
            return x
        if keep is not None:
            x, targets = x[keep], None if targets is None else targets[keep]
        logits = self.lm_head(x)  # (B, T, V), or (n, V) at the kept positions
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    # -------------------------------------------------------------------------
    # loading

    @classmethod
    def from_pretrained(cls, name_or_dir, dtype=torch.float32, verbose=True):
        """Load a HF checkpoint (hub id or local directory) strictly: every tensor of the model must come
        from the file with the right shape, and no file tensor may be left over."""
        d = resolve_checkpoint(name_or_dir)
        cfg_path = os.path.join(d, "config.json")
        if not os.path.exists(cfg_path):
            raise FileNotFoundError(f"{d}: no config.json")
        with open(cfg_path) as f:
            config = GPTConfig(**config_from_hf(json.load(f)))
        with torch.device("meta"):
            model = cls(config)
        sd = model.state_dict()
        expected = set(sd) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
        theirs = {}
        for k, v in load_checkpoint_tensors(d).items():
            ours = hf_to_ours(k, config.arch)
            if ours is None or (ours == "lm_head.weight" and config.tie_word_embeddings):
                continue  # a buffer, or a tied head saved twice: the embedding is the one we load
            if config.arch == "gpt2" and ours.endswith(CONV1D_WEIGHTS):
                v = v.t()
            theirs[ours] = v
        missing, unexpected = sorted(expected - set(theirs)), sorted(set(theirs) - expected)
        shapes = sorted(f"{k}: checkpoint {tuple(theirs[k].shape)} vs model {tuple(sd[k].shape)}"
                        for k in expected & set(theirs) if theirs[k].shape != sd[k].shape)
        if missing or unexpected or shapes:
            raise ValueError(f"{d}: checkpoint does not match the {config.arch} model built from config.json\n"
                             f"  missing: {missing}\n  unexpected: {unexpected}\n  mis-shaped: {shapes}")
        weights = {k: v.to(dtype) for k, v in theirs.items()}
        if config.tie_word_embeddings:  # the head is the embedding matrix: give both names the same tensor
            weights["lm_head.weight"] = weights["transformer.wte.weight"]
        model.load_state_dict(weights, strict=True, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.transformer.wte.weight
        if config.arch == "llama":  # non-persistent buffer: rebuild it off the meta device
            model.inv_freq = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)
        model.source = d
        if verbose:
            print(f"loaded {name_or_dir}: {config.arch}, {config.n_layer} layers, {config.n_embd} wide, "
                  f"{model.num_params() / 1e6:.1f}M parameters, {str(dtype).removeprefix('torch.')}")
        return model

    def save_pretrained(self, d):
        """Save in HF layout (config.json + model.safetensors) so our loader and transformers both read it. A
        model loaded from a checkpoint takes that checkpoint's tokenizer files along: the copy is complete."""
        os.makedirs(d, exist_ok=True)
        src = getattr(self, "source", None)
        if src and os.path.abspath(src) != os.path.abspath(d):
            for name in TOKENIZER_FILES:
                if os.path.exists(os.path.join(src, name)):
                    shutil.copyfile(os.path.join(src, name), os.path.join(d, name))
        c = self.config
        hf = config_to_hf(c)
        inverse = {}
        for k, v in self.state_dict().items():
            if k == "lm_head.weight" and c.tie_word_embeddings:
                continue
            hk = ours_to_hf(k, c.arch)
            if c.arch == "gpt2" and k.endswith(CONV1D_WEIGHTS):
                v = v.t()
            assert hf_to_ours(hk, c.arch) == k, f"key map is not invertible at {k}"
            inverse[hk] = v.float() if v.is_floating_point() else v
        write_safetensors(os.path.join(d, "model.safetensors"), inverse, {"format": "pt"})
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(hf, f, indent=2)

    # -------------------------------------------------------------------------
    # generation

    def new_cache(self):
        """An empty KV cache, one KVCache per block, filled by forward(..., cache=...)."""
        return [KVCache() for _ in self.transformer.h]

    @torch.no_grad()
    def generate(self, idx, attention_mask=None, max_new_tokens=20, eos_token_id=None):
        """Greedy continuation of each row of a left-padded batch idx (B, T) (the evaluation's decoding, as
        open-unlearning's). Stops when every row has produced an end token; finished rows are filled with the
        first end token. Returns the new tokens (B, <= max_new_tokens)."""
        if getattr(self, "routing", None) and self.routing.routers:  # adapters with routers (alter.attach)
            raise ValueError("generate with an adapted model through alter.GatedLM: its routers' running means "
                             "carry from step to step in GatedLM's cache")
        eos = eos_token_id if eos_token_id is not None else self.config.eos_token_id
        eos = torch.tensor([eos] if isinstance(eos, int) else list(eos), device=idx.device)
        B = idx.size(0)
        am = torch.ones_like(idx) if attention_mask is None else attention_mask.to(idx.dtype)
        cache = self.new_cache()
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        out, x = [], idx
        for _ in range(max_new_tokens):
            logits, _ = self(x, attention_mask=am, cache=cache, keep=(slice(None), -1))  # (B, V): the last position
            nxt = logits.float().argmax(-1)  # (B,)
            if eos.numel():
                nxt = torch.where(done, eos[0], nxt)
                done |= torch.isin(nxt, eos)
            out.append(nxt)
            if done.all():
                break
            x = nxt[:, None]
            am = torch.cat((am, torch.ones(B, 1, dtype=am.dtype, device=am.device)), dim=1)
        return torch.stack(out, dim=1) if out else idx[:, :0]
