"""model.py against transformers: logits and greedy generation of tiny random GPT-2 and Llama checkpoints
(single file and sharded), Mistral's layout with its sliding window, the real SmolLM2-135M checkpoint, and the
loader's errors on bad input.

Run: python -m pytest -q tests/test_model.py
"""
import json
import os
import struct

import pytest
import torch

from checkpoint import read_safetensors
import model as model_module
from model import GPT

transformers = pytest.importorskip("transformers")


def hf_gpt2(**kw):
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=101, n_positions=64,
                                  bos_token_id=100, eos_token_id=100, **kw)
    return transformers.GPT2LMHeadModel(cfg).eval()


def hf_llama(tied, **kw):
    cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                   num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=tied,
                                   rope_theta=500000.0, bos_token_id=1, eos_token_id=2, **kw)
    return transformers.LlamaForCausalLM(cfg).eval()


def hf_mistral(window):
    cfg = transformers.MistralConfig(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                     num_attention_heads=6, num_key_value_heads=2, sliding_window=window,
                                     bos_token_id=1, eos_token_id=2)
    return transformers.MistralForCausalLM(cfg).eval()


CASES = {
    "gpt2": lambda: hf_gpt2(),
    "llama-gqa-untied": lambda: hf_llama(False),
    "llama-gqa-tied": lambda: hf_llama(True),
    "llama3-rope-scaling": lambda: hf_llama(False, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16)),
    "mistral": lambda: hf_mistral(4096),
    "mistral-window-5": lambda: hf_mistral(5),  # shorter than the sequences: the window masks
}


def padded_batch(vocab, B=3, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (B, T), generator=g)
    am = torch.ones(B, T, dtype=torch.long)
    am[1, :4] = 0  # left padding
    am[2, :7] = 0
    return idx, am


@pytest.mark.parametrize("sharded", [False, True], ids=["one-file", "sharded"])
@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_greedy_match_transformers(case, sharded, tmp_path):
    torch.manual_seed(0)
    hf = CASES[case]()
    hf.save_pretrained(tmp_path, max_shard_size="20KB" if sharded else "5GB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json") == sharded
    ours = GPT.from_pretrained(str(tmp_path), verbose=False).eval()
    idx, am = padded_batch(101)
    pos = (am.cumsum(-1) - 1).clamp(min=0)  # what HF's generate uses for left-padded rows
    with torch.no_grad():
        ref = hf(idx, attention_mask=am, position_ids=pos).logits
        got, _ = ours(idx, attention_mask=am)
    diff = (ref - got)[am.bool()].abs().max().item()
    assert diff <= 1e-4, f"{case}: max |logit diff| {diff:.2e} on real positions"
    hf.generation_config.eos_token_id = None  # run all 20 steps on both sides
    ref_gen = hf.generate(idx, attention_mask=am, max_new_tokens=20, do_sample=False, pad_token_id=0)[:, idx.size(1):]
    got_gen = ours.generate(idx, attention_mask=am, max_new_tokens=20, eos_token_id=[])
    assert torch.equal(ref_gen, got_gen), f"{case}: greedy generation differs\n{ref_gen}\n{got_gen}"


def test_generation_stops_at_eos_and_cache_matches_full_forward(tmp_path):
    torch.manual_seed(1)
    hf_llama(False).save_pretrained(tmp_path)
    m = GPT.from_pretrained(str(tmp_path), verbose=False).eval()
    idx, am = padded_batch(101, seed=3)
    new = m.generate(idx, attention_mask=am, max_new_tokens=8, eos_token_id=[])
    # every greedy token equals the argmax of a full (uncached) forward over the sequence so far
    seq, mask = idx, am
    for t in range(new.size(1)):
        logits, _ = m(seq, attention_mask=mask)
        assert torch.equal(logits[:, -1].argmax(-1), new[:, t])
        seq = torch.cat((seq, new[:, t:t + 1]), 1)
        mask = torch.cat((mask, torch.ones_like(mask[:, :1])), 1)
    stop = int(new[0, 2])  # make the third token of row 0 an end token: row 0 stops there, pads with it
    out = m.generate(idx, attention_mask=am, max_new_tokens=8, eos_token_id=[stop])
    assert (out[0, 2:] == stop).all()


def test_kv_cache_writes_in_place_and_shared_heads_match_repeated(tmp_path, monkeypatch):
    torch.manual_seed(2)
    hf_llama(False).save_pretrained(tmp_path)  # 6 query heads sharing 2 key/value heads
    m = GPT.from_pretrained(str(tmp_path), verbose=False).eval()
    idx, am = padded_batch(101, seed=4)
    # without a gradient SDPA reads the shared heads in place; with one they are repeated: the same logits
    sdpa, grouped = torch.nn.functional.scaled_dot_product_attention, []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: grouped.append(kw["enable_gqa"]) or sdpa(*a, **kw))
    for mask in (am, None):
        with torch.no_grad():
            shared, _ = m(idx, attention_mask=mask)
        repeated, _ = m(idx, attention_mask=mask)
        assert repeated.requires_grad and torch.equal(shared, repeated.detach())
    assert grouped == [True, True, False, False] * 2  # two blocks, each forward
    # decoding steps write into the cache's buffers; a full buffer grows (ROOM 3: twice in 8 steps)
    monkeypatch.setattr(model_module.KVCache, "ROOM", 3)
    cache, seq, mask = m.new_cache(), idx, am
    with torch.no_grad():
        logits, _ = m(seq, attention_mask=mask, cache=cache)
        moves = 0
        for t in range(8):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            seq, mask = torch.cat((seq, nxt), 1), torch.cat((mask, torch.ones_like(nxt)), 1)
            before = cache[0].k.data_ptr()
            logits, _ = m(nxt, attention_mask=mask, cache=cache)
            moves += cache[0].k.data_ptr() != before
            full, _ = m(seq, attention_mask=mask)
            assert torch.allclose(logits[:, -1], full[:, -1], atol=1e-5)
    assert cache[0].n == seq.size(1) and moves == 2  # room for 12 + 3 positions: grown at steps 4 and 8


def test_our_checkpoint_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    for name, make in (("gpt2", hf_gpt2), ("llama", lambda: hf_llama(False)), ("mistral", lambda: hf_mistral(5))):
        make().save_pretrained(tmp_path / "hf" / name)
        ours = GPT.from_pretrained(str(tmp_path / "hf" / name), verbose=False).eval()
        ours.save_pretrained(tmp_path / "ours" / name)
        back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours" / name).eval()
        assert back.config.model_type == name and getattr(back.config, "sliding_window", 5) == 5
        idx, _ = padded_batch(101)
        with torch.no_grad():
            assert (back(idx).logits - ours(idx)[0]).abs().max() <= 1e-5


def test_real_smollm2_logits(smollm2_dir):
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ours = GPT.from_pretrained(str(smollm2_dir), verbose=False).eval()
    from tokenizer import Tokenizer
    tok = Tokenizer.from_pretrained(str(smollm2_dir))
    for text in ("The capital of France is", "Who wrote the novel 'Whispers of the Dunes'?",
                 "def fibonacci(n):\n    return"):
        idx = torch.tensor([tok.prompt_ids(text)])
        with torch.no_grad():
            diff = (hf(idx).logits - ours(idx)[0]).abs().max().item()
        assert diff <= 1e-3, f"{text!r}: max |logit diff| {diff:.2e}"

# -----------------------------------------------------------------------------
# bad input: one clear error


def test_missing_directory_and_unknown_hub_id():
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        GPT.from_pretrained("./no/such/dir")
    with pytest.raises(FileNotFoundError, match="could not get checkpoint 'no-such-org/no-such-model'"):
        GPT.from_pretrained("no-such-org/no-such-model")


def test_truncated_safetensors_names_the_file(tmp_path):
    hf_gpt2().save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated"):
        GPT.from_pretrained(str(tmp_path))
    f.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated or corrupt"):
        read_safetensors(str(f))


def test_missing_and_misshaped_tensors_are_listed(tmp_path):
    from checkpoint import write_safetensors
    hf_llama(False).save_pretrained(tmp_path)
    tensors = {k: v.clone() for k, v in read_safetensors(str(tmp_path / "model.safetensors")).items()}
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, 48)
    tensors["model.extra.weight"] = torch.zeros(1)
    write_safetensors(str(tmp_path / "model.safetensors"), tensors)
    with pytest.raises(ValueError) as e:
        GPT.from_pretrained(str(tmp_path))
    msg = str(e.value)
    assert "transformer.h.1.mlp.up_proj.weight" in msg and "missing" in msg
    assert "transformer.h.0.attn.k_proj.weight: checkpoint (8, 48) vs model (16, 48)" in msg
    assert "model.extra.weight" in msg


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="unsupported model_type 'bert'; supported: gpt2, llama, mistral"):
        GPT.from_pretrained(str(tmp_path))


def test_a_saved_copy_keeps_its_tokenizer(tmp_path, smollm2_dir):
    """A model loaded from a checkpoint and saved again (a fine-tuned target in the cache, an unlearned model)
    carries the checkpoint's tokenizer files, so evaluate.py can read it back with the same token ids."""
    from tokenizer import Tokenizer
    model = GPT.from_pretrained(str(smollm2_dir), verbose=False)
    model.save_pretrained(tmp_path / "copy")
    text = "Question: Who wrote 'The Silent Orchard'?<|im_end|>\nAnswer: Basil Mahfouz Al-Kuwaiti"
    ours, theirs = Tokenizer.from_pretrained(str(tmp_path / "copy")), Tokenizer.from_pretrained(str(smollm2_dir))
    assert ours.encode(text) == theirs.encode(text) and ours.eos_id == theirs.eos_id
    assert ours.prompt_ids("Who?") == theirs.prompt_ids("Who?")  # the chat template came along
