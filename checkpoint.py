"""
Checkpoint files: HF hub ids or local directories resolved to a directory, safetensors read and written by
hand (no safetensors package), and a directory's tensors loaded whatever its layout (one file, shards, .bin).
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
