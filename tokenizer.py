"""
Tokenizers as tiktoken Encodings, and the prompt formats of open-unlearning.

- GPT-2: the BPE ranks ship in data/gpt2.tiktoken (checked against their sha256), so GPT-2 tokenization
  never needs the network.
- Any checkpoint with a byte-level BPE tokenizer.json (Llama-3.x, SmolLM2, GPT-2 ...): the vocabulary is
  converted to tiktoken ranks (token id = rank, which is what byte-level BPE vocabularies are ordered by),
  the pre-tokenizer to one regex, and every added token becomes a tiktoken special token.
- SentencePiece-style BPE tokenizer.json (Llama-2, Mistral/Zephyr, MUSE's models): characters, not bytes, so
  not a tiktoken Encoding but SentencePieceBPE below, which follows HF's rules step by step.
- Prompts follow open-unlearning's `preprocess_chat_instance`: the checkpoint's chat template rendered with
  jinja2 when it has one, else "Question: {q}\nAnswer:" with the answer " {a}" (the space belongs to the
  answer so the label span starts exactly at its first word). The labelled span is what the full rendering
  adds to the prompt rendering, with EOS appended when it does not already end with it.
"""
import hashlib
import heapq
import json
import os
import re
from datetime import datetime

import tiktoken
import tiktoken.load

HERE = os.path.dirname(os.path.abspath(__file__))
GPT2_RANKS = os.path.join(HERE, "data", "gpt2.tiktoken")
GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"

# GPT-2's pre-tokenizer regex (also HF's ByteLevel(use_regex=True))
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# the same after a Digits(individual_digits=True) split (SmolLM2): one token per digit, and a run of spaces
# before a digit stays whole because the digit split ends the piece there
GPT2_DIGITS_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""

# open-unlearning's per-family prompt settings (configs/model/*.yaml), keyed by a marker of the chat template
CHAT_DEFAULTS = {
    "<|start_header_id|>": dict(system_prompt="You are a helpful assistant.", date_string="10 Apr 2025"),  # Llama-3.x
}


def bytes_to_unicode():
    """GPT-2's reversible map byte -> printable character, used by every byte-level BPE tokenizer.json."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def gpt2_encoding():
    """GPT-2's Encoding from the ranks shipped in data/ (= tiktoken's r50k_base)."""
    with open(GPT2_RANKS, "rb") as f:
        raw = f.read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != GPT2_SHA256:
        raise ValueError(f"{GPT2_RANKS}: sha256 {digest} differs from GPT-2's {GPT2_SHA256}; restore the file")
    ranks = tiktoken.load.load_tiktoken_bpe(GPT2_RANKS)
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


def pretokenizer_regex(pre, path):
    """One tiktoken regex equal to a tokenizer.json pre_tokenizer, for the configurations we know."""
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return GPT2_PAT
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return GPT2_DIGITS_PAT
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True) and \
            steps[0].get("behavior") == "Isolated" and "Regex" in steps[0].get("pattern", {}):
        return steps[0]["pattern"]["Regex"]  # Llama-3's pattern, usable by tiktoken as it is
    raise ValueError(f"{path}: unsupported pre_tokenizer {kinds} (supported: ByteLevel, Digits+ByteLevel, "
                     f"Split+ByteLevel as in GPT-2, SmolLM2 and Llama-3)")


def encoding_from_tokenizer_json(path):
    """Convert a byte-level BPE tokenizer.json to a tiktoken Encoding with the same ids."""
    with open(path, encoding="utf-8") as f:
        tj = json.load(f)
    m = tj.get("model", {})
    if m.get("type") != "BPE":
        raise ValueError(f"{path}: tokenizer model {m.get('type')!r} is not BPE (Unigram and WordPiece "
                         f"vocabularies are not supported)")
    if m.get("byte_fallback") or "▁" in json.dumps([tj.get("normalizer"), tj.get("pre_tokenizer")], ensure_ascii=False):
        return SentencePieceBPE(tj, path), tj, set()
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    specials = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
    ranks = {}
    for tok, i in m["vocab"].items():
        if tok in specials:
            continue
        try:
            ranks[bytes(decoder[c] for c in tok)] = i
        except KeyError:
            raise ValueError(f"{path}: vocabulary entry {tok!r} is not byte-level BPE") from None
    # Some vocabularies lack a few single bytes (SmolLM2: control characters, bytes never valid in UTF-8).
    # HF drops such bytes; tiktoken needs every byte, so they get ids past the vocabulary that encode() drops.
    top = max(list(ranks.values()) + list(specials.values()))
    unknown = {}
    for b in range(256):
        if bytes([b]) not in ranks:
            top += 1
            ranks[bytes([b])] = unknown[b] = top
    pat = pretokenizer_regex(tj.get("pre_tokenizer") or {}, path)
    name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    enc = tiktoken.Encoding(name, pat_str=pat, mergeable_ranks=ranks, special_tokens=specials)
    return enc, tj, set(unknown.values())


class SentencePieceBPE:
    """A SentencePiece-style BPE tokenizer.json, encoded as HF `tokenizers` does: the text is split at added
    tokens; in every other segment spaces become '▁' and a '▁' goes in front (normalizer Prepend: every
    segment; Metaspace prepend_scheme always|first: every segment, or the text's start only, unless it already
    starts with '▁'); each word is a sequence of characters, a character outside the vocabulary becomes its
    UTF-8 bytes as <0xXX> tokens, and merges apply lowest rank first, leftmost first. Same interface as a
    tiktoken Encoding where Tokenizer uses one."""

    def __init__(self, tj, path):
        m = tj["model"]
        self.vocab, self.unk, self.fuse_unk = m["vocab"], m["vocab"].get(m.get("unk_token")), m.get("fuse_unk")
        self.pieces = {i: p for p, i in self.vocab.items()}
        self.byte_ids = [self.vocab.get(f"<0x{b:02X}>") for b in range(256)] if m.get("byte_fallback") else None
        self.merges = {}  # (left id, right id) -> (rank, merged id)
        for rank, mg in enumerate(m["merges"]):
            a, b = mg.split(" ") if isinstance(mg, str) else mg
            self.merges.setdefault((self.vocab[a], self.vocab[b]), (rank, self.vocab[a + b]))
        self.specials = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
        for t in tj.get("added_tokens", []):
            self.pieces[t["id"]] = t["content"]
        self.special_re = re.compile("(" + "|".join(map(re.escape, sorted(self.specials, key=len, reverse=True))) + ")")
        norm, pre = tj.get("normalizer") or {}, tj.get("pre_tokenizer") or {}
        steps = [s["type"] for s in norm.get("normalizers", [norm]) if s]
        if steps == ["Prepend", "Replace"] and not pre:  # Llama-2's conversion ("legacy")
            self.prepend, self.split = "every", False
        elif not norm and pre.get("type") == "Metaspace":
            scheme = pre.get("prepend_scheme", "always" if pre.get("add_prefix_space", True) else "never")
            self.prepend = {"always": "unless", "first": "first", "never": "never"}[scheme]
            self.split = pre.get("split", True)
        else:
            raise ValueError(f"{path}: unsupported SentencePiece-style normalizer {steps} with pre_tokenizer "
                             f"{pre.get('type')} (supported: Prepend+Replace, or Metaspace)")
        # Words can be cut before every '▁' that follows another character when no token spans such a place
        # (true of SentencePiece vocabularies trained on words): exact, and each word is encoded once.
        # (Metaspace's split: every '▁' starts a word.)
        self.cut = "▁[^▁]*|[^▁]+" if self.split else \
            "▁*[^▁]+|▁+" if not any(re.search("[^▁]▁", p) for p in self.vocab) else None
        self.cache = {}

    def encode(self, text, allowed_special="all"):
        ids, at = [], 0
        for seg in self.special_re.split(text) if self.specials else [text]:
            if seg in self.specials:
                ids.append(self.specials[seg])
            elif seg:
                s = seg.replace(" ", "▁")
                if self.prepend == "every" or (self.prepend == "unless" or (self.prepend == "first" and at == 0)) \
                        and not s.startswith("▁"):
                    s = "▁" + s
                for w in re.findall(self.cut, s) if self.cut else [s]:
                    if w not in self.cache:
                        self.cache[w] = self.bpe(w)
                    ids += self.cache[w]
            at += len(seg)
        return ids

    def bpe(self, word):
        """HF's BPE.merge_word: a min-heap of (rank, position) over a linked list of symbols."""
        syms = []
        for ch in word:
            if ch in self.vocab:
                syms.append(self.vocab[ch])
            elif self.byte_ids and all(self.byte_ids[b] is not None for b in ch.encode()):
                syms += [self.byte_ids[b] for b in ch.encode()]
            elif self.unk is not None and not (self.fuse_unk and syms and syms[-1] == self.unk):
                syms.append(self.unk)  # (no unk token: the character is dropped)
        nxt, prv = list(range(1, len(syms) + 1)), list(range(-1, len(syms) - 1))
        heap = [(self.merges[p][0], i, p) for i, p in enumerate(zip(syms, syms[1:])) if p in self.merges]
        heapq.heapify(heap)
        while heap:
            rank, i, pair = heapq.heappop(heap)
            j = nxt[i]
            if syms[i] is None or j >= len(syms) or (syms[i], syms[j]) != pair:
                continue  # stale: one side was merged away since
            syms[i], syms[j] = self.merges[pair][1], None
            nxt[i] = nxt[j]
            if nxt[i] < len(syms):
                prv[nxt[i]] = i
            for a, b in ((prv[i], i), (i, nxt[i])):
                if a >= 0 and b < len(syms) and (syms[a], syms[b]) in self.merges:
                    heapq.heappush(heap, (self.merges[syms[a], syms[b]][0], a, (syms[a], syms[b])))
        return [s for s in syms if s is not None]

    def decode(self, ids):
        """Pieces joined, <0xXX> tokens as bytes, '▁' as a space, the first leading space dropped."""
        out = b""
        for i in ids:
            p = self.pieces[i]
            out += bytes([int(p[3:5], 16)]) if re.fullmatch(r"<0x[0-9A-F]{2}>", p) else p.replace("▁", " ").encode()
        text = out.decode("utf-8", errors="replace")
        return text[1:] if text.startswith(" ") and self.prepend != "never" else text


class Tokenizer:
    """A tiktoken Encoding plus what a model needs around it: EOS/BOS ids and the prompt format."""

    def __init__(self, enc, eos_id, bos_id=None, add_bos=False, chat_template=None, bos_token="", eos_token="",
                 dropped=()):
        self.enc, self.dropped = enc, set(dropped)  # dropped: ids of bytes the real vocabulary does not have
        self.eos_id, self.bos_id, self.add_bos = eos_id, bos_id, add_bos
        self.chat_template, self.bos_token, self.eos_token = chat_template, bos_token, eos_token
        self.pad_id = eos_id  # padding is masked everywhere; EOS is the usual stand-in
        self.system = None  # a system prompt that replaces the format's default everywhere (--system-prompt)
        self.defaults = next((v for k, v in CHAT_DEFAULTS.items() if chat_template and k in chat_template), {})

    def encode(self, text, bos=False):
        """Token ids of text; special-token strings (e.g. <|im_start|>) map to their ids, as in HF."""
        ids = self.enc.encode(text, allowed_special="all")
        if self.dropped:
            ids = [i for i in ids if i not in self.dropped]
        return ([self.bos_id] if bos and self.bos_id is not None else []) + ids

    def decode(self, ids):
        return self.enc.decode(list(ids))

    @classmethod
    def gpt2(cls):
        return cls(gpt2_encoding(), eos_id=50256, bos_id=50256, bos_token="<|endoftext|>", eos_token="<|endoftext|>")

    @classmethod
    def from_pretrained(cls, d):
        """The tokenizer of a checkpoint directory (see checkpoint.resolve_checkpoint for hub ids). A directory
        without tokenizer.json is taken to use GPT-2's vocabulary if its config says 50,257 tokens."""
        cfg = json.load(open(os.path.join(d, "config.json"))) if os.path.exists(os.path.join(d, "config.json")) else {}
        tj_path = os.path.join(d, "tokenizer.json")
        if not os.path.exists(tj_path):
            if cfg.get("vocab_size") == 50257:
                return cls.gpt2()
            raise FileNotFoundError(f"{d}: no tokenizer.json (only GPT-2-vocabulary checkpoints may omit it)")
        enc, tj, dropped = encoding_from_tokenizer_json(tj_path)
        tc_path = os.path.join(d, "tokenizer_config.json")
        tc = json.load(open(tc_path, encoding="utf-8")) if os.path.exists(tc_path) else {}
        template = tc.get("chat_template")
        if os.path.exists(os.path.join(d, "chat_template.jinja")):
            template = open(os.path.join(d, "chat_template.jinja"), encoding="utf-8").read()
        if isinstance(template, list):  # several named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)

        def token(key):
            t = tc.get(key)
            return t.get("content") if isinstance(t, dict) else t

        def tid(s, fallback):
            if s is None:
                return fallback
            ids = enc.encode(s, allowed_special="all")
            return ids[0] if len(ids) == 1 else fallback
        eos_cfg = cfg.get("eos_token_id")
        eos_cfg = eos_cfg[0] if isinstance(eos_cfg, list) else eos_cfg
        eos_id = tid(token("eos_token"), eos_cfg)
        if eos_id is None:
            raise ValueError(f"{d}: no EOS token in tokenizer_config.json or config.json")
        bos_id = tid(token("bos_token"), cfg.get("bos_token_id"))
        # a TemplateProcessing post-processor that starts with a special token means "prepend BOS" (Llama-3)
        post = tj.get("post_processor") or {}
        procs = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
        add_bos = any(p.get("type") == "TemplateProcessing" and "SpecialToken" in (p.get("single") or [{}])[0]
                      for p in procs)
        return cls(enc, eos_id=eos_id, bos_id=bos_id, add_bos=add_bos, chat_template=template,
                   bos_token=token("bos_token") or "", eos_token=token("eos_token") or "", dropped=dropped)

    # -------------------------------------------------------------------------
    # prompt formats

    def render_chat(self, messages, add_generation_prompt):
        """The chat template rendered as transformers' apply_chat_template does (sandboxed jinja2)."""
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg):
            raise TemplateError(msg)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
        env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=self.bos_token,
            eos_token=self.eos_token, **{k: v for k, v in self.defaults.items() if k != "system_prompt"})

    def system_prompt(self, override=None):
        for s in (override, self.system):
            if s is not None:
                return s
        return self.defaults.get("system_prompt")

    def prompt_ids(self, question, system_prompt=None, few_shot=()):
        """Token ids of the prompt alone (what generation starts from). few_shot: (q, a) pairs put before
        the question ("\\n\\n"-joined without a template; earlier turns with one)."""
        if self.chat_template:
            return self.encode(self.render_chat(self._messages(question, None, system_prompt, few_shot), True))
        return self.encode(self._plain(question, system_prompt, few_shot), bos=self.add_bos)

    def _plain(self, question, system_prompt, few_shot):
        shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in few_shot)
        sys = self.system_prompt(system_prompt)
        return (sys + "\n\n" if sys else "") + shots + f"Question: {question}\nAnswer:"

    def encode_qa(self, question, answer, system_prompt=None, few_shot=()):
        """(ids, n_prompt): the full example and how many of its leading tokens are prompt (unlabelled).
        ids[n_prompt:] is the labelled answer span, ending with EOS."""
        prompt = self.prompt_ids(question, system_prompt, few_shot)
        if self.chat_template:
            full = self.encode(self.render_chat(self._messages(question, answer, system_prompt, few_shot), False))
            if full[:len(prompt)] != prompt or len(full) == len(prompt):
                raise ValueError(f"chat template renders the prompt differently inside the full conversation; "
                                 f"cannot find the answer span of {question[:60]!r}")
        else:  # the answer's ids as the suffix of the whole text (a SentencePiece '▁' goes with " answer")
            full = self.encode(self._plain(question, system_prompt, few_shot) + " " + answer, bos=self.add_bos)
            if full[:len(prompt)] != prompt:
                raise ValueError(f"the answer merges with the prompt's last token; cannot find the answer span of "
                                 f"{question[:60]!r}")
        if full[-1] != self.eos_id:
            full = full + [self.eos_id]
        return full, len(prompt)

    def _messages(self, question, answer, system_prompt, few_shot):
        sys = self.system_prompt(system_prompt)
        msgs = [{"role": "system", "content": sys}] if sys else []
        for q, a in few_shot:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        msgs.append({"role": "user", "content": question})
        if answer is not None:
            msgs.append({"role": "assistant", "content": answer})
        return msgs

    def describe(self, system_prompt=None):
        """The prompt format in one line, printed once per run."""
        if self.chat_template:
            prompt = self.render_chat(self._messages("{question}", None, system_prompt, ()), True)
            return "chat template: " + repr(prompt)
        return "plain: " + repr(self.decode(self.prompt_ids("{question}", system_prompt)) + " {answer}")
