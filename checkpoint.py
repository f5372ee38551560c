"""
Checkpoint files: HF hub ids or local directories resolved to a directory, safetensors read and written by
hand (no safetensors package), a directory's tensors loaded whatever its layout (one file, shards, .bin), and
HF's config.json and tensor names mapped to ours and back (model.py builds and loads the model from them).
"""
import json
import math
import mmap
import os
import struct

import torch

SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                      "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path, metadata=False):
    """Read a .safetensors file: 8-byte little-endian header length, a JSON header, raw little-endian tensors.
    Every length and offset is checked against the file size, and errors name the file.
    Returns {name: tensor}, or ({name: tensor}, the header's __metadata__ dict) with metadata=True."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size < 8:
            raise ValueError(f"{path}: truncated safetensors file ({size} bytes, the header length alone is 8)")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise ValueError(f"{path}: truncated or corrupt safetensors file (header says {n} bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: corrupt safetensors header ({e})") from None
        meta = header.pop("__metadata__", None) or {}
        data_size = size - 8 - n
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > 8 + n else bytearray()
    tensors = {}
    for name, info in header.items():
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        begin, end = info["data_offsets"]
        numel = math.prod(info["shape"])
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not (0 <= begin <= end <= data_size) or end - begin != numel * itemsize:
            raise ValueError(f"{path}: truncated or corrupt safetensors file (tensor {name!r} spans bytes "
                             f"{begin}..{end} of {data_size}, needs {numel * itemsize})")
        t = torch.frombuffer(buf, dtype=dtype, count=numel, offset=8 + n + begin) if numel else \
            torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(info["shape"])
    return (tensors, meta) if metadata else tensors


def write_safetensors(path, tensors, metadata=None):
    """Write tensors (name -> tensor) in the safetensors format, atomically (tmp file + rename)."""
    rev = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    header, chunks, offset = {}, [], 0
    for name, t in tensors.items():
        raw = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": rev[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    hbytes = json.dumps(header).encode()
    hbytes += b" " * (-len(hbytes) % 8)  # align the data to 8 bytes, as the reference writer does
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for c in chunks:
            f.write(c)
    os.replace(tmp, path)


WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")  # what a checkpoint holds


def load_checkpoint_tensors(d):
    """All tensors of a checkpoint directory: model.safetensors, sharded safetensors with an index, or a
    .bin file through torch.load(weights_only=True) (never unpickling arbitrary objects)."""
    index = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        missing = [s for s in shards if not os.path.exists(os.path.join(d, s))]
        if missing:
            raise FileNotFoundError(f"{d}: shards listed in model.safetensors.index.json are missing: {missing}")
        out = {}
        for s in shards:
            out.update(read_safetensors(os.path.join(d, s)))
        return out
    if os.path.exists(os.path.join(d, "model.safetensors")):
        return read_safetensors(os.path.join(d, "model.safetensors"))
    if os.path.exists(os.path.join(d, "pytorch_model.bin")):
        return torch.load(os.path.join(d, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{d}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


class HubError(FileNotFoundError):
    """Something the run needs could not be fetched from the HF hub (offline, unknown or gated)."""


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def resolve_checkpoint(name_or_dir, weights=True):
    """A local directory as it is, or a HF hub id downloaded (config, tokenizer and, with `weights`, weight
    files only)."""
    if os.path.isdir(name_or_dir):
        return name_or_dir
    looks_local = name_or_dir.startswith((".", "/", "~")) or name_or_dir.count("/") > 1 or \
        os.sep + os.sep in name_or_dir
    if looks_local:
        raise FileNotFoundError(f"checkpoint directory not found: {name_or_dir}")
    try:
        from huggingface_hub import snapshot_download  # installed with `datasets`
        return snapshot_download(name_or_dir, allow_patterns=["*.json", "*.jinja"] + ["*.safetensors"] * weights)
    except Exception as e:  # unknown repo, no network, gated model ...: one message, the cause named
        cause = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        raise HubError(f"could not get checkpoint {name_or_dir!r}: it is not a local directory and the HF hub "
                       f"download failed ({cause})") from None

# -----------------------------------------------------------------------------
# HF config.json and tensor names <-> ours

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral")


def config_from_hf(hf):
    """The model.GPTConfig fields of a HF config.json dict. Unknown model types fail with the supported list."""
    mt = hf.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported model_type {mt!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if mt == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"unsupported GPT-2 activation_function {act!r} (supported: gelu_new)")
        return dict(arch="gpt2", vocab_size=hf["vocab_size"], block_size=hf["n_positions"],
                    n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                    intermediate_size=hf.get("n_inner") or 4 * hf["n_embd"],
                    norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                    tie_word_embeddings=hf.get("tie_word_embeddings", True),
                    bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"))
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {hf.get('hidden_act')!r} for {mt} (supported: silu)")
    # transformers >= 5 writes rope_parameters = {rope_theta, rope_type, ...}; older files rope_theta/rope_scaling
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    return dict(arch="llama", vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
                n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
                n_embd=hf["hidden_size"], head_dim=hf.get("head_dim") or 0,
                intermediate_size=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
                rope_theta=hf.get("rope_theta", rope.get("rope_theta", 10000.0)), rope_scaling=scaling,
                attention_bias=hf.get("attention_bias", False), mlp_bias=hf.get("mlp_bias", False),
                tie_word_embeddings=hf.get("tie_word_embeddings", False),
                sliding_window=hf.get("sliding_window") if mt == "mistral" else None,
                bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"))


def config_to_hf(c):
    """A model.GPTConfig as a HF config.json dict (the inverse of config_from_hf)."""
    if c.arch == "gpt2":
        hf = dict(model_type="gpt2", vocab_size=c.vocab_size, n_positions=c.block_size, n_layer=c.n_layer,
                  n_head=c.n_head, n_embd=c.n_embd, n_inner=c.intermediate_size, layer_norm_epsilon=c.norm_eps,
                  activation_function="gelu_new", tie_word_embeddings=c.tie_word_embeddings,
                  architectures=["GPT2LMHeadModel"])
    else:
        hf = dict(model_type="mistral" if c.sliding_window else "llama", vocab_size=c.vocab_size,
                  max_position_embeddings=c.block_size,
                  num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
                  hidden_size=c.n_embd, head_dim=c.head_dim, intermediate_size=c.intermediate_size,
                  rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta, rope_scaling=c.rope_scaling,
                  attention_bias=c.attention_bias, mlp_bias=c.mlp_bias, hidden_act="silu",
                  tie_word_embeddings=c.tie_word_embeddings, architectures=["LlamaForCausalLM"])
        if c.sliding_window:
            hf.update(sliding_window=c.sliding_window, architectures=["MistralForCausalLM"])
    hf.update(bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id)
    return hf


# Llama-family HF names -> ours (GPT-2's names are ours already, up to a "transformer." prefix)
LLAMA_KEYS = (("model.embed_tokens.", "transformer.wte."), ("model.norm.", "transformer.ln_f."),
              ("model.layers.", "transformer.h."), (".input_layernorm.", ".ln_1."),
              (".post_attention_layernorm.", ".ln_2."), (".self_attn.", ".attn."))


def hf_to_ours(key, arch):
    """HF checkpoint key -> our state_dict key (None for buffers we do not keep)."""
    if arch == "gpt2":
        key = key.removeprefix("transformer.")
        if key.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers of old GPT-2 files
            return None
        return key if key.startswith("lm_head.") else "transformer." + key
    for hf, ours in LLAMA_KEYS:
        key = key.replace(hf, ours)
    return None if key.endswith(".rotary_emb.inv_freq") else key


def ours_to_hf(key, arch):
    if arch == "gpt2":
        return key
    for hf, ours in LLAMA_KEYS:
        key = key.replace(ours, hf)
    return key


# GPT-2 stores these as Conv1D (in, out): transpose to nn.Linear's (out, in)
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
