"""evaluate.py: every metric against an independent computation (scipy, rouge-score, brute force, by hand),
lm-eval-harness's prompts written out character for character, and the CLI's errors on bad input.

Run: python -m pytest -q tests/test_evaluate.py
"""
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from evaluate import mc_prompt
from inference import avg_nll
from metrics import (auc, forget_quality, load_retain_logs, min_k, model_utility, privleak, prob_normalised, rouge_l,
                     tr_forget, tr_true_better, truth_ratio)
from tests.conftest import ROOT


def test_probability_and_truth_ratio_from_token_losses():
    # hand-made per-token log-probs of the labelled spans (answer + EOS)
    para = [torch.tensor([-0.1, -0.3, -0.2]), torch.tensor([-2.0, -1.0])]
    pert = [[torch.tensor([-1.0, -2.0]), torch.tensor([-0.5, -0.5, -0.5])],
            [torch.tensor([-0.2]), torch.tensor([-0.4, -0.2])]]
    nll_true = avg_nll(para)
    assert np.allclose(nll_true, [0.2, 1.5])
    nll_false = np.array([avg_nll(p) for p in pert])  # (2, 2): [[1.5, 0.5], [0.2, 0.3]]
    tr = truth_ratio(nll_true, nll_false)
    # P_false = geometric mean of the perturbed probabilities, P_true = exp(-avg loss)
    p_false = [np.sqrt(np.exp(-1.5) * np.exp(-0.5)), np.sqrt(np.exp(-0.2) * np.exp(-0.3))]
    p_true = [np.exp(-0.2), np.exp(-1.5)]
    assert np.allclose(tr, [p_false[0] / p_true[0], p_false[1] / p_true[1]])
    assert np.isclose(tr_forget(tr), np.mean([min(t, 1 / t) for t in tr]))
    assert np.isclose(tr_true_better(tr), np.mean([max(0, 1 - t) for t in tr]))
    # probability normalised over the true and wrong options
    pn = prob_normalised([0.5], [[1.0, 2.0, 3.0]])
    e = np.exp
    assert np.isclose(pn[0], e(-0.5) / (e(-0.5) + e(-1) + e(-2) + e(-3)))


def test_forget_quality_and_model_utility_against_scipy():
    from scipy.stats import hmean, ks_2samp
    rng = np.random.default_rng(0)
    a, b = rng.random(40), rng.random(40) * 0.8
    assert forget_quality(a, b) == ks_2samp(a, b).pvalue
    nine = rng.random(9) + 0.01
    assert np.isclose(model_utility(nine), hmean(nine))
    nine[3] = 0.0
    assert model_utility(nine) == 0.0


def test_rouge_equals_rouge_score():
    from rouge_score import rouge_scorer
    refs = ["The cat sat on the mat.", "Basil Mahfouz Al-Kuwaiti was born in Kuwait City.", "running quickly"]
    hyps = ["A cat was sitting on mats", "He was born in Kuwait City in 1956.", "she runs quick"]
    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert np.allclose(rouge_l(refs, hyps, "recall"), [sc.score(r, h)["rougeL"].recall for r, h in zip(refs, hyps)])
    assert np.allclose(rouge_l(refs, hyps, "f1"), [sc.score(r, h)["rougeL"].fmeasure for r, h in zip(refs, hyps)])
    assert rouge_l(["sitting"], ["sits"], "recall")[0] == 1.0  # stemming is on


def test_min_k_and_auc_by_brute_force():
    lp = torch.tensor([-0.1, -5.0, -2.0, -0.3, -4.0])
    assert np.isclose(min_k(lp, 0.4), (5.0 + 4.0) / 2)  # floor(0.4 * 5) = 2 lowest
    assert np.isclose(min_k(lp[:2], 0.4), 5.0)  # at least one token
    rng = np.random.default_rng(1)
    f, h = rng.integers(0, 5, 17).astype(float), rng.integers(0, 5, 11).astype(float)  # many ties
    brute = np.mean([1.0 if y > x else 0.5 if y == x else 0.0 for x, y in itertools.product(f, h)])
    assert np.isclose(auc(f, h), brute)
    assert privleak(1.0) == pytest.approx(-100) and privleak(0.5) == pytest.approx(0)
    assert privleak(0.7, 0.7) == pytest.approx(0)


def test_lm_eval_prompts_character_for_character(shared_data):
    from data.benchmarks import load_split
    dev = load_split("mmlu_abstract_algebra_dev", str(shared_data))
    test = load_split("mmlu_abstract_algebra_test", str(shared_data))[0]
    zero = ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
            "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
            "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")
    assert mc_prompt(test) == zero
    five = mc_prompt(test, dev[:5])
    first_shot = ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
                  "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
                  "Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 | If H and "
                  "K are subgroups of G then HK is a subgroup of G.\nA. True, True\nB. False, False\nC. True, False\n"
                  "D. False, True\nAnswer: B\n\n")
    assert five.startswith(first_shot)
    assert five.endswith("\n\nFind the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
                         "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")
    assert five.count("\nAnswer: ") == 5
    wmdp = load_split("wmdp_bio", str(shared_data))[0]
    c = wmdp["choices"]
    assert mc_prompt(wmdp) == ("The following are multiple choice questions (with answers) about biology.\n\n"
                               f"{wmdp['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:")
    assert wmdp["question"].startswith("What was the primary objective of the Ekologiya program")


def run_cli(*args):
    return subprocess.run([sys.executable, "evaluate.py", *args], cwd=ROOT, capture_output=True, text=True)


def test_cli_bad_input(tmp_path):
    from model import GPT, TINY, GPTConfig
    GPT(GPTConfig(**{**TINY, "n_layer": 1, "n_embd": 32, "n_head": 2})).save_pretrained(tmp_path / "m")
    out = tmp_path / "out"
    r = run_cli("--model", str(tmp_path / "m"), "--bench", "tofu_forget11", "--out", str(out))
    assert r.returncode == 2 and "unknown bench ['tofu_forget11']; valid: tofu_forget01" in r.stderr
    r = run_cli("--model", str(tmp_path / "m"), "--bench", "toy_forget10", "--limit", "0", "--out", str(out))
    assert r.returncode == 2 and "--limit must be at least 1, got 0" in r.stderr
    (tmp_path / "logs.json").write_text(json.dumps({"something": 1}))
    r = run_cli("--model", str(tmp_path / "m"), "--bench", "toy_forget10", "--retain-logs",
                str(tmp_path / "logs.json"), "--out", str(out))
    assert r.returncode == 2 and "expected open-unlearning's TOFU_EVAL.json" in r.stderr
    logs = {"forget_truth_ratio": {"value_by_index": {str(i): {"score": 0.5} for i in range(7)}}}
    (tmp_path / "logs.json").write_text(json.dumps(logs))
    r = run_cli("--model", str(tmp_path / "m"), "--bench", "toy_forget10", "--retain-logs",
                str(tmp_path / "logs.json"), "--out", str(out))
    assert r.returncode == 2 and "7 forget items, but this forget split has 24" in r.stderr
    assert not out.exists(), "a failed run wrote output"


def test_reference_sets_forget_quality_and_privleak():
    """open-unlearning's rules: forget quality only against a retain reference (missing without one), privleak
    and muse_privleak against the reference's Min-K% AUC (0.5 without one); the retain row itself gets 1 and 0."""
    from scipy.stats import ks_2samp
    from metrics import apply_reference
    tr = [0.3, 0.8, 1.2, 0.5]
    row = {"forget_truth_ratio_by_item": tr, "privleak_auc": 0.8, "muse_privleak_auc": 0.3}
    alone = apply_reference(dict(row))
    assert alone["forget_quality"] is None
    assert alone["privleak"] == pytest.approx(((1 - 0.8) - 0.5) / 0.5 * 100)
    ref = {"forget_truth_ratio_by_item": [0.9, 1.0, 1.1], "privleak_auc": 0.6, "muse_privleak_auc": 0.55}
    got = apply_reference(dict(row), ref)
    assert got["forget_quality"] == pytest.approx(ks_2samp(tr, ref["forget_truth_ratio_by_item"]).pvalue)
    assert got["privleak"] == pytest.approx(((1 - 0.8) - (1 - 0.6)) / (1 - 0.6) * 100)
    assert got["muse_privleak"] == pytest.approx(((1 - 0.3) - (1 - 0.55)) / (1 - 0.55) * 100)
    own = apply_reference(dict(row), row)
    assert own["forget_quality"] == 1.0 and own["privleak"] == 0.0 and own["muse_privleak"] == 0.0


def test_retain_logs_follow_the_evaluated_items_and_the_mask_rule(tmp_path):
    """Retain logs cover a whole forget split (open-unlearning's) or exactly the evaluated items (ours); the
    first `limit` items are compared; logs made under the other mask rule are refused."""
    ou = {"forget_truth_ratio": {"value_by_index": {str(i): {"score": i / 40} for i in range(40)}},
          "mia_min_k": {"agg_value": 0.61}}
    (tmp_path / "ou.json").write_text(json.dumps(ou))
    ref = load_retain_logs(str(tmp_path / "ou.json"), 40, limit=12)
    assert ref["forget_truth_ratio_by_item"] == [i / 40 for i in range(12)] and ref["privleak_auc"] == 0.61
    with pytest.raises(ValueError, match="computed with the 'ou' attention mask"):
        load_retain_logs(str(tmp_path / "ou.json"), 40, 12, "padding")
    ours = {"retain": {"forget_truth_ratio_by_item": [0.5] * 12, "privleak_auc": 0.4, "eval_mask": "padding"}}
    (tmp_path / "ours.json").write_text(json.dumps(ours))
    assert load_retain_logs(str(tmp_path / "ours.json"), 40, 12, "padding")["privleak_auc"] == 0.4
    with pytest.raises(ValueError, match="computed with the 'padding' attention mask"):
        load_retain_logs(str(tmp_path / "ours.json"), 40, 12, "ou")
    with pytest.raises(ValueError, match="12 forget items, but this forget split has 40 and 13 are evaluated"):
        load_retain_logs(str(tmp_path / "ours.json"), 40, 13, "padding")
    # open-unlearning's MUSE_EVAL.json: no truth ratios, its Min-K% AUC is the PrivLeak reference
    (tmp_path / "muse.json").write_text(json.dumps({"mia_min_k": {"agg_value": 0.47}}))
    assert load_retain_logs(str(tmp_path / "muse.json"))["muse_privleak_auc"] == 0.47
    (tmp_path / "none.json").write_text(json.dumps({"retain": {"eval_mask": "ou"}}))
    with pytest.raises(ValueError, match="no retain numbers in it"):
        load_retain_logs(str(tmp_path / "none.json"))


def test_metrics_json_never_holds_nan(tmp_path):
    from metrics import write_json
    write_json(str(tmp_path / "m.json"), {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": float("-inf")}})
    text = (tmp_path / "m.json").read_text()
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert strict == {"a": None, "b": [1.0, None], "c": {"d": None}}


def test_toy_evaluation_follows_the_data_seed():
    from data.benchmarks import load_split
    from evaluate import evaluate
    from model import GPT, GPTConfig, TINY
    from tokenizer import Tokenizer
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, "n_layer": 1, "n_embd": 32, "n_head": 2})).eval()
    _, items = evaluate(model, Tokenizer.gpt2(), ["toy_forget10"], limit=2, seed=1, batch_size=8)
    asked = [it["question"] for it in items if it["set"] == "forget"]
    assert asked == [r["question"] for r in load_split("toy_forget10_perturbed", seed=1)[:2]]
    assert asked != [r["question"] for r in load_split("toy_forget10_perturbed", seed=0)[:2]]

# -----------------------------------------------------------------------------
# the "ou" mask rule against transformers run as open-unlearning runs it: attention_mask = ids != pad (pad = EOS)


class IdsTok:
    """The slice of Tokenizer that inference.generate uses, for a toy vocabulary: ids decode to themselves."""

    def __init__(self, eos_id):
        self.eos_id = self.pad_id = eos_id

    def decode(self, ids):
        return " ".join(map(str, ids))


def eos_inside_batch(eos):
    """(ids, n_prompt) examples whose prompts hold end-of-turn tokens (= pad) as chat prompts do, and whose
    labelled spans end "<eos> x <eos>" as SmolLM2's do; lengths differ, so the batch is right-padded."""
    g = torch.Generator().manual_seed(5)
    body = lambda n: torch.randint(3, 99, (n,), generator=g).tolist()
    prompts = [body(4) + [eos] + body(3) + [eos] + body(2), body(6) + [eos] + body(5), body(3) + [eos] + body(1)]
    answers = [body(4) + [eos] + body(1) + [eos], body(2) + [eos] + body(1) + [eos], body(7) + [eos] + body(1) + [eos]]
    return [(p + a, len(p)) for p, a in zip(prompts, answers)], prompts


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_ou_mask_scoring_and_generation_match_transformers(arch, tmp_path):
    transformers = pytest.importorskip("transformers")
    from inference import generate, token_logps
    from model import GPT
    torch.manual_seed(0)
    if arch == "llama":
        cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                       num_attention_heads=6, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
        hf = transformers.LlamaForCausalLM(cfg).eval()
    else:
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=101, n_positions=64,
                                      bos_token_id=2, eos_token_id=2)
        hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(str(tmp_path), verbose=False).eval()
    pad = 2
    examples, prompts = eos_inside_batch(pad)

    # scoring: right-padded batch, positions 0..T-1 (transformers' default), EOS = pad masked everywhere
    T = max(len(ids) for ids, _ in examples)
    ids = torch.tensor([e + [pad] * (T - len(e)) for e, _ in examples])
    with torch.no_grad():
        logp = torch.log_softmax(hf(ids, attention_mask=(ids != pad).long()).logits.float(), -1)
    ref = [torch.stack([logp[b, t - 1, e[t]] for t in range(n, len(e))]) for b, (e, n) in enumerate(examples)]
    got = token_logps(ours, examples, pad, mask_rule="ou")
    diff = max((r - g).abs().max().item() for r, g in zip(ref, got))
    assert diff <= 1e-5, f"{arch}: max |log-prob diff| {diff:.2e}"
    padding_only = token_logps(ours, examples, pad, mask_rule="padding")
    assert max((r - g).abs().max().item() for r, g in zip(ref, padding_only)) > 1e-3, "the rules agree on this batch"

    # generation: left-padded prompts, attention_mask = ids != pad, positions from generate (cumsum of the mask)
    from data.batching import collate_prompts
    x, _ = collate_prompts(prompts, pad)
    hf.generation_config.eos_token_id = None
    new = hf.generate(x, attention_mask=(x != pad).long(), max_new_tokens=12, do_sample=False, eos_token_id=[pad],
                      pad_token_id=pad)[:, x.size(1):].tolist()
    ref_gen = [" ".join(map(str, row[:row.index(pad)] if pad in row else row)) for row in new]
    tok = IdsTok(pad)
    assert generate(ours, tok, prompts, 12, mask_rule="ou") == ref_gen
    assert generate(ours, tok, prompts, 12, mask_rule="padding") != ref_gen, "the rules agree on this batch"


def test_ou_mask_tofu_probability_and_truth_ratio_match_transformers(smollm2_dir, shared_data):
    """Real SmolLM2 and TOFU forget01: per-item answer probability and truth ratio as open-unlearning computes
    them with transformers (fp32, attention_mask = ids != pad, labels -100 on the prompt, mean token NLL)."""
    transformers = pytest.importorskip("transformers")
    from data.batching import encode_qa
    from data.benchmarks import load_split
    from inference import avg_nll, token_logps
    from model import GPT
    from tokenizer import Tokenizer
    rows = load_split("tofu_forget01_perturbed", str(shared_data))[:3]
    tok = Tokenizer.from_pretrained(str(smollm2_dir))
    ours = GPT.from_pretrained(str(smollm2_dir), verbose=False).eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    pad = tok.pad_id

    def hf_nll(examples):
        T = max(len(ids) for ids, _ in examples)
        ids = torch.tensor([e + [pad] * (T - len(e)) for e, _ in examples])
        labels = ids.clone()
        for b, (e, n) in enumerate(examples):
            labels[b, :n] = labels[b, len(e):] = -100
        with torch.no_grad():
            logits = hf(ids, attention_mask=(ids != pad).long()).logits.double()
        # log-softmax in fp64: fp32 cross_entropy over the (B, V, T) view is off by ~1e-4 per item on CPU
        logp = torch.log_softmax(logits[:, :-1], -1).gather(2, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
        keep = labels[:, 1:] != -100
        return (-(logp * keep).sum(1) / keep.sum(1)).numpy()

    nll = {}
    for key in ("answer", "paraphrased_answer", "perturbed_answer"):
        ex = encode_qa(tok, rows, key)
        assert any(pad in ids[:n] for ids, n in ex), "the prompts hold EOS = pad tokens"
        nll[key] = (avg_nll(token_logps(ours, ex, pad, mask_rule="ou")), hf_nll(ex))
        if key == "answer":
            padding_only = avg_nll(token_logps(ours, ex, pad, mask_rule="padding"))
            assert np.abs(padding_only - nll[key][1]).max() > 1e-3, "the rules agree on these items"
    got_prob, ref_prob = np.exp(-nll["answer"][0]), np.exp(-nll["answer"][1])
    assert np.allclose(got_prob, ref_prob, rtol=1e-4, atol=0), (got_prob, ref_prob)
    tr = [truth_ratio(nll["paraphrased_answer"][i], nll["perturbed_answer"][i].reshape(len(rows), -1)) for i in (0, 1)]
    assert np.allclose(tr[0], tr[1], rtol=1e-4, atol=0), tr
