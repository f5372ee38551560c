"""data/: split sizes of the local mirror, the hub requests for every split name, the toy benchmark's
invariants, answer-only batching, and errors on bad input.

Run: python -m pytest -q tests/test_data.py
"""
import json

import pytest

from data import toy
from data.batching import batch_indices, collate, collate_prompts, encode_qa, encode_text
from data.benchmarks import SPLITS, load_split
from tokenizer import Tokenizer

MIRROR_SIZES = {
    "tofu_full": 4000, "tofu_forget01": 40, "tofu_forget05": 200, "tofu_forget10": 400,
    "tofu_forget01_perturbed": 40, "tofu_forget05_perturbed": 200, "tofu_forget10_perturbed": 400,
    "tofu_retain90": 3600, "tofu_retain95": 3800, "tofu_retain99": 3960, "tofu_retain_perturbed": 400,
    "tofu_real_authors_perturbed": 100, "tofu_world_facts_perturbed": 117, "tofu_holdout10": 400,
    "mmlu_test": 14042, "mmlu_dev": 285, "wmdp_bio": 1520, "wmdp_cyber": 2225, "wmdp_chem": 412,
    "muse_news_knowmem_forget_qa": 100, "muse_news_knowmem_retain_qa": 100, "muse_news_verbmem_forget": 100,
    "muse_news_privleak_forget": 100, "muse_news_privleak_retain": 100, "muse_news_privleak_holdout": 100,
}


@pytest.mark.parametrize("name", list(MIRROR_SIZES))
def test_mirror_split_sizes(name, shared_data):
    rows = load_split(name, data_dir=str(shared_data))
    assert len(rows) == MIRROR_SIZES[name]
    if name.endswith(("forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed")):
        assert all(len(r["perturbed_answer"]) == 5 for r in rows)
    if name.startswith("mmlu"):
        assert len({r["subject"] for r in rows}) == 57


# the hub's repository / config / split for a few names, written out from the dataset cards
HUB = {
    "tofu_forget10_perturbed": ("locuslab/TOFU", "forget10_perturbed", "train"),
    "tofu_retain90": ("locuslab/TOFU", "retain90", "train"),
    "tofu_world_facts_perturbed": ("locuslab/TOFU", "world_facts_perturbed", "train"),
    "wmdp_cyber": ("cais/wmdp", "wmdp-cyber", "test"),
    "wmdp_cyber_forget": ("cais/wmdp-corpora", "cyber-forget-corpus", "train"),
    "wmdp_bio_retain": ("cais/wmdp-corpora", "bio-retain-corpus", "train"),
    "muse_news_knowmem_retain_qa": ("muse-bench/MUSE-News", "knowmem", "retain_qa"),
    "muse_books_verbmem_forget": ("muse-bench/MUSE-Books", "verbmem", "forget"),
    "muse_news_privleak_holdout": ("muse-bench/MUSE-News", "privleak", "holdout"),
    "muse_news_raw_retain2": ("muse-bench/MUSE-News", "raw", "retain2"),
    "mmlu_test": ("cais/mmlu", "all", "test"),
    "mmlu_anatomy_dev": ("cais/mmlu", "anatomy", "dev"),
}


def test_hub_requests_for_every_name(monkeypatch, shared_data):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(repo, config, split):
        calls.append((repo, config, split))
        # serve the mirror's records through a real datasets.Dataset, so both paths can be compared
        name = next(n for n, s in SPLITS.items() if (s.repo, s.config, s.split) == (repo, config, split))
        try:
            rows = load_split(name, data_dir=str(shared_data))
        except FileNotFoundError:
            rows = [{f: "x" for f in SPLITS[name].fields}]
        return datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "subject"} for r in rows])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    for name, src in SPLITS.items():
        calls.clear()
        rows = load_split(name)
        assert calls == [(src.repo, src.config, src.split)]
        if name in HUB:
            assert calls[0] == HUB[name]
        if name in ("tofu_forget10_perturbed", "muse_news_knowmem_forget_qa", "wmdp_bio"):
            local = load_split(name, data_dir=str(shared_data))
            assert rows == local, f"{name}: hub and mirror records differ"  # WMDP's subject included
    # the hub's WMDP records (served above without a subject) get lm-eval's domain name and make a prompt
    from evaluate import mc_prompt
    assert mc_prompt(load_split("wmdp_cyber")[0]).startswith("The following are multiple choice questions "
                                                             "(with answers) about cybersecurity.")
    assert len({(s.repo, s.config, s.split) for s in SPLITS.values()}) == len(SPLITS)


# -----------------------------------------------------------------------------
# the toy benchmark


def test_toy_is_deterministic_and_seeded():
    a, b, c = toy.build(0), toy.build(0), toy.build(1)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert json.dumps(a, sort_keys=True) != json.dumps(c, sort_keys=True)


def test_toy_invariants():
    d = toy.build(0)
    people = lambda split: {r["person"] for r in d[split]}
    for pct, retain in toy.RETAIN_OF.items():
        assert not people(f"toy_forget{pct}") & people(f"toy_retain{retain}")
        assert people(f"toy_forget{pct}") | people(f"toy_retain{retain}") == people("toy_full")
        assert not people(f"toy_holdout{pct}") & people("toy_full")
        assert people(f"toy_mc_forget{pct}") == people(f"toy_forget{pct}")
        assert not people(f"toy_mc_forget{pct}") & people("toy_mc_retain")
    assert people("toy_forget01") < people("toy_forget05") < people("toy_forget10")
    assert not people("toy_retain_perturbed") & people("toy_forget10")
    for split, rows in d.items():
        if rows and "question" in rows[0] and not split.startswith("toy_mc"):
            qs = [r["question"] for r in rows]
            assert len(qs) == len(set(qs)), f"{split} has duplicate questions"
        for r in rows:
            if "paraphrased_answer" in r:
                assert r["paraphrased_answer"] != r["answer"]
                assert len(r["perturbed_answer"]) == 5
            if "perturbed_answer" in r:
                opts = r["perturbed_answer"]
                assert len(set(opts)) == len(opts) and r["answer"] not in opts
                assert r.get("paraphrased_answer") not in opts
            if "choices" in r:
                assert len(set(r["choices"])) == 4 and 0 <= r["answer"] < 4


def test_toy_through_load_split():
    rows = load_split("toy_forget10_perturbed")
    assert len(rows) == 4 * len(toy.FACTS)
    rows[0]["question"] = "changed"
    assert load_split("toy_forget10_perturbed")[0]["question"] != "changed"  # callers get copies

# -----------------------------------------------------------------------------
# batching


@pytest.mark.parametrize("make_tok", [Tokenizer.gpt2], ids=["gpt2"])
def test_labels_are_exactly_answer_plus_eos(make_tok):
    tok = make_tok()
    rows = load_split("toy_forget10_perturbed")[:5]
    examples = encode_qa(tok, rows)
    batch = collate(examples, tok.pad_id)
    for b, r in enumerate(rows):
        y, x, m = batch["y"][b], batch["x"][b], batch["mask"][b]
        labelled = y[y != -100].tolist()
        assert tok.decode(labelled) == " " + r["answer"] + "<|endoftext|>"
        ids, n_prompt = examples[b]
        # every prompt token is unlabelled: targets before position n_prompt - 1 are -100
        assert (y[:n_prompt - 1] == -100).all() and y[n_prompt - 1] != -100
        assert x[:len(ids) - 1].tolist() == ids[:-1] and m.sum() == len(ids) - 1
    per = encode_qa(tok, rows[:2], answer_key="perturbed_answer")
    assert len(per) == 10
    assert tok.decode(per[0][0][per[0][1]:]) == " " + rows[0]["perturbed_answer"][0] + "<|endoftext|>"


def test_chat_template_labels(smollm2_dir):
    tok = Tokenizer.from_pretrained(str(smollm2_dir))
    rows = load_split("toy_forget10")[:3]
    batch = collate(encode_qa(tok, rows), tok.pad_id)
    for b, r in enumerate(rows):
        y = batch["y"][b]
        assert tok.decode(y[y != -100].tolist()) == r["answer"] + "<|im_end|>\n<|im_end|>"


def test_generation_batches_are_left_padded_and_text_windows():
    tok = Tokenizer.gpt2()
    prompts = [tok.prompt_ids(r["question"]) for r in load_split("toy_forget10")[:4]]
    idx, am = collate_prompts(prompts, tok.pad_id)
    for b, p in enumerate(prompts):
        assert idx[b, -len(p):].tolist() == p and am[b].sum() == len(p)
        assert (am[b, :idx.size(1) - len(p)] == 0).all() and (am[b, idx.size(1) - len(p):] == 1).all()
    windows = encode_text(tok, [r["text"] for r in load_split("toy_bio")[:3]], block_size=16)
    assert all(len(w) <= 16 for w, _ in windows)
    batch = collate(windows, tok.pad_id)
    assert (batch["y"][0] != -100).all()  # every token after the first is predicted


def test_batch_order_depends_only_on_seed_and_epoch():
    assert batch_indices(10, 3, seed=1, epoch=0) == batch_indices(10, 3, seed=1, epoch=0)
    assert batch_indices(10, 3, seed=1, epoch=0) != batch_indices(10, 3, seed=1, epoch=1)
    assert sorted(sum(batch_indices(10, 3, seed=2), [])) == list(range(10))

# -----------------------------------------------------------------------------
# bad input


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'tofu_forget11'. Valid names: .*tofu_forget10"):
        load_split("tofu_forget11")
    with pytest.raises(ValueError, match="unknown split 'toy_nope'"):
        load_split("toy_nope")
    (tmp_path / "tofu").mkdir()
    bad = tmp_path / "tofu" / "forget01.json"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n\n" + json.dumps({"question": "q2"}) + "\n")
    with pytest.raises(ValueError, match=r"forget01\.json, line 3: malformed record, missing field\(s\) \['answer'\]"):
        load_split("tofu_forget01", data_dir=str(tmp_path))
    bad.write_text("")
    with pytest.raises(ValueError, match="split tofu_forget01 is empty"):
        load_split("tofu_forget01", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"cyber-forget-corpus\.jsonl is missing.*cais/wmdp-corpora"):
        load_split("wmdp_cyber_forget", data_dir=str(tmp_path))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["forget01.json", "tofu"]  # nothing else written


def test_forget_pairs_are_forget10_authors_and_pair_9_is_forget01(shared_data):
    """--forget-pair K: the K-th pair of forget10's authors, for training and evaluation alike; TOFU's forget01
    is forget10's last pair, so K = 9 reproduces it exactly."""
    import argparse
    from data.forget_sets import forget_rows
    from evaluate import forget_eval_rows
    d = str(shared_data)
    args = lambda k: argparse.Namespace(data_dir=d, seed=0, forget_pair=k)
    assert forget_rows("tofu", "01", args(9)) == forget_rows("tofu", "01", args(None)) == load_split("tofu_forget01", d)
    assert forget_eval_rows("tofu", "01", d, forget_pair=9) == load_split("tofu_forget01_perturbed", d)
    f3, e3 = forget_rows("tofu", "01", args(3)), forget_eval_rows("tofu", "01", d, forget_pair=3)
    assert f3 == load_split("tofu_forget10", d)[120:160] and [r["question"] for r in e3] == [r["question"] for r in f3]
    assert not {r["question"] for r in f3} & {r["question"] for r in load_split("tofu_forget01", d)}
