"""tokenizer.py against the HF reference tokenizers: GPT-2 ids from the shipped ranks, SmolLM2 ids on every
TOFU question and answer, the chat-formatted prompt, and the answer span that open-unlearning labels.

Run: python -m pytest -q tests/test_tokenizer.py
"""
import hashlib
import json

import pytest

from tokenizer import GPT2_RANKS, GPT2_SHA256, Tokenizer

transformers = pytest.importorskip("transformers")


def tofu_texts(shared_data):
    rows = [json.loads(line) for line in open(shared_data / "tofu" / "full.json", encoding="utf-8")]
    assert len(rows) == 4000
    return [r[k] for r in rows for k in ("question", "answer")]


def test_gpt2_ranks_ship_with_the_repo():
    assert hashlib.sha256(open(GPT2_RANKS, "rb").read()).hexdigest() == GPT2_SHA256
    tok = Tokenizer.gpt2()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("<|endoftext|>") == [50256]


def test_gpt2_matches_hf_and_round_trips_tofu(shared_data):
    # the reference: HF `tokenizers` BPE built from GPT-2's original encoder.json + vocab.bpe
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers
    ref = HFTokenizer(models.BPE.from_file(str(shared_data / "gpt2" / "encoder.json"),
                                           str(shared_data / "gpt2" / "vocab.bpe")))
    ref.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = Tokenizer.gpt2()
    texts = tofu_texts(shared_data)
    ours = [tok.encode(t) for t in texts]
    assert ours == [e.ids for e in ref.encode_batch(texts)]
    assert all(tok.decode(ids) == t for ids, t in zip(ours, texts))


def test_smollm2_ids_equal_hf_on_all_of_tofu(smollm2_dir, shared_data):
    ref = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    tok = Tokenizer.from_pretrained(str(smollm2_dir))
    texts = tofu_texts(shared_data) + ["a  1", "x\u00a0 42", "it's 3.14!!  ", "日本語 123", "a\x04b", "  \n\n 12 x"]
    ours = [tok.encode(t) for t in texts]
    theirs = ref(texts)["input_ids"]
    bad = [(t, a, b) for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, first: {bad[0]}"


def test_smollm2_chat_prompt_and_answer_span(smollm2_dir):
    ref = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    tok = Tokenizer.from_pretrained(str(smollm2_dir))
    q, a = "Who is the author of 'The Silent Orchard'?", "It was written by Mara Quill."
    user = [{"role": "user", "content": q}]
    assert tok.prompt_ids(q) == ref.apply_chat_template(user, add_generation_prompt=True, tokenize=True,
                                                        return_dict=False)
    # open-unlearning: labels = full rendering minus prompt rendering, EOS appended if missing
    full = ref.apply_chat_template(user + [{"role": "assistant", "content": a}], tokenize=True, return_dict=False)
    ids, n = tok.encode_qa(q, a)
    expected = full if full[-1] == ref.eos_token_id else full + [ref.eos_token_id]
    assert ids == expected
    assert tok.decode(ids[n:]) == a + "<|im_end|>\n<|im_end|>"


def test_plain_prompt_format():
    tok = Tokenizer.gpt2()
    ids, n = tok.encode_qa("Where was Ada born?", "In Paris.")
    assert tok.decode(ids[:n]) == "Question: Where was Ada born?\nAnswer:"
    assert tok.decode(ids[n:]) == " In Paris.<|endoftext|>"
    assert ids == tok.encode("Question: Where was Ada born?\nAnswer: In Paris.") + [50256]  # clean boundary
    few = tok.prompt_ids("Q3?", few_shot=[("Q1?", "A1."), ("Q2?", "A2.")])
    assert tok.decode(few) == "Question: Q1?\nAnswer: A1.\n\nQuestion: Q2?\nAnswer: A2.\n\nQuestion: Q3?\nAnswer:"


def test_llama3_style_template_gets_open_unlearning_defaults(tmp_path, smollm2_dir):
    # a Llama-3-style template: open-unlearning's system prompt and date string are filled in
    cfg = json.load(open(smollm2_dir / "tokenizer_config.json"))
    cfg["chat_template"] = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
                            "<|end_header_id|>\n\n{% if m['role'] == 'system' %}Today Date: {{ date_string }}\n\n"
                            "{% endif %}{{ m['content'] }}<|eot_id|>{% endfor %}"
                            "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
                            "{% endif %}")
    for f in ("tokenizer.json", "config.json"):
        (tmp_path / f).write_bytes((smollm2_dir / f).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_pretrained(str(tmp_path))
    text = tok.decode(tok.prompt_ids("Q?"))
    assert "Today Date: 10 Apr 2025\n\nYou are a helpful assistant.<|eot_id|>" in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_system_prompt_override_reaches_every_prompt(smollm2_dir):
    tok = Tokenizer.from_pretrained(str(smollm2_dir))
    tok.system = "Answer briefly."
    assert tok.decode(tok.prompt_ids("Q?")).startswith("<|im_start|>system\nAnswer briefly.<|im_end|>")
    ids, n = tok.encode_qa("Q?", "A.")
    assert tok.decode(ids[:n]) == tok.decode(tok.prompt_ids("Q?"))
    plain = Tokenizer.gpt2()
    plain.system = "Be brief."
    assert plain.decode(plain.prompt_ids("Q?")) == "Be brief.\n\nQuestion: Q?\nAnswer:"


ODD = ["", " ", "  x", " Hello", "Hello  world ", "a\u00a0b", "😀 emoji 🤖!", "é è ß 日本語", "\x00\x7f\x04",
       "1234567 3.14 007", "\n\n  \t", "x</s> y", "<s>Hi", "Hi<s>", "▁already", "a▁▁b"]


def spm_style_tokenizer(tmp_path, shared_data, variant, words=True, fallback=True):
    """A SentencePiece-style BPE built and trained with HF `tokenizers` on TOFU answers (few characters kept,
    so that byte fallback, or without it <unk>, happens), saved as a checkpoint's tokenizer files; returns (dir,
    HF tokenizer)."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    ref = HFTokenizer(models.BPE(byte_fallback=fallback, unk_token="<unk>", fuse_unk=True))
    texts = tofu_texts(shared_data)[1::2][:1500 if words else 300]
    texts += [t.replace(" ", "  ") for t in texts[:100]]  # runs of spaces: tokens such as '▁▁the'
    if words:  # trained on words as SentencePiece is, or on whole texts (tokens that span spaces)
        ref.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
    else:
        ref.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] * fallback
    ref.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1200, special_tokens=specials, limit_alphabet=50))
    if variant == "legacy":  # Llama-2's conversion
        ref.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        ref.pre_tokenizer = None
    else:
        ref.normalizer = None
        ref.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=variant, split=variant == "always")
    ref.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    ref.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    return tmp_path, ref


@pytest.mark.parametrize("variant,words,fallback", [("legacy", True, True), ("first", True, True),
                                                    ("always", True, True), ("legacy", False, True),
                                                    ("always", False, True), ("first", True, False)])
def test_sentencepiece_style_ids_equal_hf(tmp_path, shared_data, variant, words, fallback):
    d, ref = spm_style_tokenizer(tmp_path, shared_data, variant, words, fallback)
    tok = Tokenizer.from_pretrained(str(d))
    assert tok.eos_id == 2 and tok.bos_id == 1
    texts = tofu_texts(shared_data) + ODD
    ours = [tok.encode(t) for t in texts]
    theirs = [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)]
    bad = [(t, a, b) for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, first: {bad[0]}"
    if fallback:
        assert any(3 <= i < 259 for ids in ours for i in ids)  # byte fallback was exercised
    else:
        assert any(0 in ids for ids in ours)  # <unk> was
    assert [tok.decode(ids) for ids in ours] == ref.decode_batch(theirs, skip_special_tokens=False)


def test_sentencepiece_style_answer_span_and_mc_letters(tmp_path, shared_data):
    """Llama-2's rule puts a '▁' before every separately encoded text: the answer span and the MC letters are
    the whole text's ids after the prompt's (open-unlearning, lm-eval), not " answer" encoded alone."""
    from evaluate import eval_mc
    d, ref = spm_style_tokenizer(tmp_path, shared_data, "legacy")
    tok = Tokenizer.from_pretrained(str(d))
    ids, n = tok.encode_qa("Where was Ada born?", "In Paris.")
    assert ids == ref.encode("Question: Where was Ada born?\nAnswer: In Paris.", add_special_tokens=False).ids + [2]
    assert ids[:n] == tok.prompt_ids("Where was Ada born?") and tok.decode(ids[n:]) == "In Paris.</s>"

    torch = pytest.importorskip("torch")
    letters = [ref.encode(f"Answer: {L}", add_special_tokens=False).ids[-1] for L in "ABCD"]

    class Oracle:  # a model whose next-token logits favour the reference's id of " C" over every other token
        config = type("C", (), {"block_size": 64})

        def __call__(self, x, attention_mask=None, keep=None, **kw):
            logits = torch.zeros(*x.shape, len(ref.get_vocab()))
            logits[..., letters[2]] = 1.0
            return (logits if keep is None else logits[keep]), None
    row = {"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 2, "subject": "x"}
    assert eval_mc(Oracle(), tok, [row]) == [1]  # eval_mc reads " C" at the reference's id
    assert all(ref.id_to_token(i) == "▁" + L for i, L in zip(letters, "ABCD"))
