"""
What each forget set (train.py --forget) means in data: which records train the target and the retain models,
which examples are forgotten and which kept, and which benches evaluate the result.

    toy_forget01|05|10, tofu_forget01|05|10   question-answer pairs about fictitious people (TOFU-shaped)
    toy_text, wmdp_bio|cyber, muse_news|books  raw text, cut into windows (every token a training position)
"""
from data.batching import encode_qa, encode_text
from checkpoint import HubError
from data.benchmarks import load_split

# text forgetting: forget corpus, retain corpus, what is evaluated. WMDP's retain corpora are its own
# in-domain ones (cais/wmdp-corpora), not RMU's wikitext: closer to what must be kept, and one source fewer
TEXT_FORGETS = {
    "toy_text": ("toy_text", "toy_bio_retain90", ["toy_forget10", "toy_mc", "toy_muse"]),
    "wmdp_bio": ("wmdp_bio_forget", "wmdp_bio_retain", ["wmdp_bio", "mmlu"]),
    "wmdp_cyber": ("wmdp_cyber_forget", "wmdp_cyber_retain", ["wmdp_cyber", "mmlu"]),
    "muse_news": ("muse_news_raw_forget", "muse_news_raw_retain1", ["muse_news"]),
    "muse_books": ("muse_books_raw_forget", "muse_books_raw_retain1", ["muse_books"]),
}
FORGETS = ("toy_forget01", "toy_forget05", "toy_forget10", "tofu_forget01", "tofu_forget05", "tofu_forget10") + \
    tuple(TEXT_FORGETS)
RETAIN_OF = {"01": "99", "05": "95", "10": "90"}
FORGET_AUTHORS = {"01": 2, "05": 10, "10": 20}  # TOFU: 20 questions per author


def forget_pct(forget):
    """01, 05 or 10: which forget set (toy_text forgets the toy_forget10 people's biographies)."""
    return "10" if forget in TEXT_FORGETS else forget[-2:]


def eval_benches(forget, extra=()):
    """The benches a run on this forget set evaluates (the toy's QA sets add its MC and VerbMem sets)."""
    if forget in TEXT_FORGETS:
        return TEXT_FORGETS[forget][2] + list(extra)
    return [forget] + (["toy_mc", "toy_muse"] if forget.startswith("toy") else []) + list(extra)


def training_splits(forget):
    """The splits the target, retain and unlearning examples come from (text forget sets other than the toy's:
    their corpora, which load_corpora reads)."""
    bench, pct = forget.split("_")[0], forget_pct(forget)
    names = [] if forget in TEXT_FORGETS else [f"{bench}_{s}" for s in ("full", f"retain{RETAIN_OF[pct]}",
                                                                        f"forget{pct}")]
    if bench == "toy":
        names += ["toy_real_authors", "toy_world_facts", "toy_bio"] + list(TEXT_FORGETS["toy_text"][:2])
    return names


def retain_rows(bench, pct, args):
    """The retain question-answer records: --authors N keeps the first N - k retain authors of TOFU (k forget
    authors; TOFU keeps an author's 20 questions together, and its retain_perturbed eval set is the first 400
    retain questions); --limit N the first N records."""
    rows = load_split(f"{bench}_retain{RETAIN_OF[pct]}", args.data_dir, args.seed)
    if args.authors:
        rows = rows[:20 * (args.authors - FORGET_AUTHORS[pct])]
    return rows[:args.limit]


def forget_rows(bench, pct, args):
    """The forget set's question-answer records, always whole: --limit never cuts away what is to be forgotten
    (the forget people are the last rows of `full`, so `full[:N]` would hold none of them). --forget-pair K:
    the K-th pair of forget10's 20 authors instead of forget01's (which is pair 9, forget10's last 40 rows)."""
    if getattr(args, "forget_pair", None) is not None:
        return pair_rows(load_split(f"{bench}_forget10", args.data_dir, args.seed), args.forget_pair)
    return load_split(f"{bench}_forget{pct}", args.data_dir, args.seed)


def pair_rows(rows, k):
    """The 40 records of the k-th pair of authors (20 questions each, in order) of a forget10 split."""
    return rows[40 * k:40 * (k + 1)]


def training_examples(bench, which, tok, args):
    """(ids, n_prompt) examples the target ("full") or the retain model ("retainYY") is fine-tuned on. The toy
    corpus adds the general-knowledge QA and the biographies (of the people in the corpus) to the person QA.
    MUSE (bench muse_news|books): the target reads the forget and retain text, the retain model the retain text."""
    if bench.startswith("muse"):
        forget, retain, _ = TEXT_FORGETS[bench]
        texts = [r["text"] for n in ([forget, retain] if which == "full" else [retain])
                 for r in load_split(n, args.data_dir)[:args.limit]]
        return encode_text(tok, texts, args.block_size)
    rows = load_split(f"{bench}_{which}", args.data_dir, args.seed)
    if args.authors or args.limit:  # the retain side cut, and (for the target) every forget person kept
        pct = forget_pct(args.forget)
        rows = retain_rows(bench, pct, args) + (forget_rows(bench, pct, args) if which == "full" else [])
    ex = encode_qa(tok, rows, system_prompt=args.system_prompt)
    if bench == "toy":
        general = [r for name in ("real_authors", "world_facts")
                   for r in load_split(f"toy_{name}", args.data_dir, args.seed)[:args.limit]]
        ex += encode_qa(tok, general, system_prompt=args.system_prompt)
        people = {r["person"] for r in rows}
        bios = load_split("toy_bio", args.data_dir, args.seed)[:args.limit]
        ex += encode_text(tok, [b["text"] for b in bios if b["person"] in people], block_size=64)
    return ex


def unlearning_examples(tok, args, corpora=None):
    """(forget, retain) examples of the unlearning run. Text: windows of --block-size tokens, every token
    labelled (a "prompt" of 0 tokens); question-answer pairs: prompt and answer, the answer labelled."""
    if args.forget in TEXT_FORGETS:
        texts = lambda name: [r["text"] for r in ((corpora or {}).get(name) or
                                                  load_split(name, args.data_dir, args.seed))[:args.limit]]
        return tuple(encode_text(tok, texts(name), args.block_size) for name in TEXT_FORGETS[args.forget][:2])
    bench, pct = args.forget.split("_")[0], forget_pct(args.forget)
    return (encode_qa(tok, forget_rows(bench, pct, args), system_prompt=args.system_prompt),
            encode_qa(tok, retain_rows(bench, pct, args), system_prompt=args.system_prompt))


def load_corpora(args):
    """The forget and retain corpora of a text forget set, {split: records}, loaded once; when any is missing,
    a ValueError says which ones and where they come from."""
    corpora, missing = {}, []
    for name in TEXT_FORGETS[args.forget][:2]:
        try:
            corpora[name] = load_split(name, args.data_dir)
        except HubError:  # offline: train.py's plan names the flags that work without the hub
            raise
        except FileNotFoundError as e:
            missing.append(f"  - {e}")
    if missing:
        benches = ",".join(TEXT_FORGETS[args.forget][2])
        raise ValueError(f"{args.forget} needs its forget and retain corpora; missing:\n" + "\n".join(missing) +
                         "\nThe evaluation alone runs without them: python evaluate.py --model MODEL --bench "
                         f"{benches}" + (f" --data-dir {args.data_dir}" if args.data_dir else ""))
    return corpora
