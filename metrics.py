"""
Metric formulas and the retain reference, as open-unlearning (TOFU, MUSE) defines them: pure functions of
per-item numbers, each compared in tests/test_evaluate.py with scipy, rouge-score or a computation by hand;
and the JSON writers of every result file (atomic, NaN as null).
"""
import json
import math
import os

import numpy as np
import torch

# -----------------------------------------------------------------------------
# formulas


def truth_ratio(nll_true, nll_false):
    """Per item P_false / P_true, P_true = exp(-avg_loss of the paraphrased (or true) answer), P_false =
    exp(-mean_j avg_loss of the perturbed answers): the geometric mean, as open-unlearning averages in log space.
    nll_true (n,), nll_false (n, k)."""
    return np.exp(-np.mean(nll_false, axis=1)) / (np.exp(-np.asarray(nll_true)) + 1e-10)


def tr_forget(tr):
    """forget_truth_ratio: mean(min(tr, 1/tr)) (open-unlearning's closer_to_1_better)."""
    return float(np.mean(np.minimum(tr, 1 / tr)))


def tr_true_better(tr):
    """retain / real-authors / world-facts truth ratio: mean(max(0, 1 - tr))."""
    return float(np.mean(np.maximum(0, 1 - tr)))


def prob_normalised(nll_true, nll_wrong):
    """P_true / (P_true + sum_j P_wrong_j + 1e-10) with length-normalised probabilities, per item."""
    pt, pw = np.exp(-np.asarray(nll_true)), np.exp(-np.asarray(nll_wrong)).sum(1)
    return pt / (pt + pw + 1e-10)


def rouge_l(refs, hyps, kind):
    """ROUGE-L of each (reference, generation) pair with rouge-score, stemmer on (open-unlearning):
    kind "recall" for TOFU, "f1" for MUSE."""
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    attr = {"recall": "recall", "f1": "fmeasure"}[kind]
    return np.array([getattr(scorer.score(r, h)["rougeL"], attr) for r, h in zip(refs, hyps)])


def forget_quality(tr_model, tr_reference):
    """KS-test p-value between the per-item forget truth ratios of the model and of the retain reference."""
    from scipy.stats import ks_2samp
    return float(ks_2samp(tr_model, tr_reference).pvalue)


def model_utility(nine):
    """Harmonic mean of the 9 utility numbers; 0 if any is 0 (as scipy.stats.hmean)."""
    v = np.asarray(list(nine), dtype=float)
    assert len(v) == 9, f"model utility needs 9 numbers, got {len(v)}"
    return 0.0 if (v <= 0).any() else float(len(v) / np.sum(1 / v))


def min_k(logp, k=0.4):
    """Min-K% score of one text: -mean of the lowest floor(k * n) token log-probs (at least one)."""
    n = max(1, int(k * len(logp)))
    return float(-torch.sort(logp).values[:n].mean())


def auc(forget_scores, holdout_scores):
    """P(holdout score > forget score) + 1/2 P(equal): roc_auc_score with forget = 0, holdout = 1 and
    loss-like scores (open-unlearning's convention; a memorising model gives ~1)."""
    from scipy.stats import rankdata
    s = np.concatenate([forget_scores, holdout_scores])
    ranks = rankdata(s)  # average ranks: ties count 1/2
    nf, nh = len(forget_scores), len(holdout_scores)
    return float((ranks[nf:].sum() - nh * (nh + 1) / 2) / (nf * nh))


def privleak(auc_model, auc_ref=0.5):
    """open-unlearning's privleak: ((1 - AUC) - (1 - AUC_ref)) / (1 - AUC_ref + 1e-10) * 100 (-100: fully
    leaking, 0: like the retain model). AUC_ref = 0.5 when there is no retain reference."""
    return ((1 - auc_model) - (1 - auc_ref)) / (1 - auc_ref + 1e-10) * 100


def apply_reference(summary, reference=None):
    """The numbers that compare a model with the retain reference, set in place (open-unlearning's rules):
    forget quality = KS p-value of the forget truth ratios against the reference's (None without one: missing,
    never invented), privleak and muse_privleak against the reference's Min-K% AUC (0.5 without one).
    reference: the retain model's summary, or retain logs as load_retain_logs returns them."""
    ref = reference or {}
    if "forget_truth_ratio_by_item" in summary:
        tr_ref = ref.get("forget_truth_ratio_by_item")
        summary["forget_quality"] = None if tr_ref is None else \
            forget_quality(np.array(summary["forget_truth_ratio_by_item"]), np.array(tr_ref))
    for key in ("privleak", "muse_privleak"):
        if f"{key}_auc" in summary:
            auc_ref = ref.get(f"{key}_auc")
            summary[key] = privleak(summary[f"{key}_auc"], 0.5 if auc_ref is None else auc_ref)
    return summary

# -----------------------------------------------------------------------------
# the retain reference from logs, and writing results


def load_retain_logs(path, n_items=None, limit=None, mask_rule="ou"):
    """The retain reference from a logs JSON, as a summary for apply_reference: its per-item forget truth
    ratios (the first `limit` of the split's n_items; n_items None: no TOFU bench, none needed) and Min-K%
    AUCs. Reads open-unlearning's TOFU_EVAL.json (forget_truth_ratio.value_by_index.{i}.score,
    mia_min_k.agg_value), computed under its mask rule "ou", or our metrics.json (its "retain" row, or a
    summary: forget_truth_ratio_by_item, privleak_auc, muse_privleak_auc, eval_mask). Logs made under another
    mask rule than `mask_rule` are refused: their numbers are not comparable."""
    try:
        logs = json.load(open(path))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--retain-logs {path}: cannot read it as JSON ({e})") from None
    if isinstance(logs.get("forget_truth_ratio"), dict) or isinstance(logs.get("mia_min_k"), dict):  # open-unlearning
        by = (logs.get("forget_truth_ratio") or {}).get("value_by_index", {})
        vals = [v["score"] if isinstance(v, dict) else v for _, v in sorted(by.items(), key=lambda kv: int(kv[0]))]
        auc_ref = (logs.get("mia_min_k") or {}).get("agg_value")  # TOFU_EVAL's and MUSE_EVAL's privleak reference
        ref = {"privleak_auc": auc_ref, "muse_privleak_auc": auc_ref}
        rule = "ou"
    else:  # ours: train.py's metrics.json (rows) or evaluate.py's (one summary)
        row = logs.get("retain", logs)
        vals = row.get("forget_truth_ratio_by_item")
        ref = {k: row.get(k) for k in ("privleak_auc", "muse_privleak_auc")}
        rule = row.get("eval_mask", "padding")  # summaries written before the rule existed masked padding only
    if n_items is not None:
        if not vals:
            raise ValueError(f"--retain-logs {path}: expected open-unlearning's TOFU_EVAL.json (forget_truth_ratio."
                             f"value_by_index) or our metrics.json (forget_truth_ratio_by_item); found keys "
                             f"{sorted(logs)[:8]}")
        need = min(limit or n_items, n_items)  # the items evaluated: the first `limit`
        if not need <= len(vals) <= n_items:
            raise ValueError(f"--retain-logs {path}: {len(vals)} forget items, but this forget split has {n_items} "
                             f"and {need} are evaluated: is it for another split or limit?")
        ref["forget_truth_ratio_by_item"] = [float(v) for v in vals[:need]]
    if all(v is None for v in ref.values()):
        raise ValueError(f"--retain-logs {path}: no retain numbers in it (forget truth ratios or a Min-K% AUC)")
    if rule != mask_rule:
        raise ValueError(f"--retain-logs {path} were computed with the {rule!r} attention mask, this evaluation uses "
                         f"{mask_rule!r}: truth ratios differ between the two; pass --eval-mask/--mask {rule}")
    return ref


def write_jsonl(path, items):
    """One JSON object per line, atomically, NaN written as null (as write_json)."""
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(_finite(it), allow_nan=False) + "\n" for it in items)
    os.replace(path + ".tmp", path)


def _finite(v):
    """v with every NaN or infinity (which JSON cannot hold) replaced by None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return [_finite(x) for x in v] if isinstance(v, (list, tuple)) else v


def write_json(path, obj):
    """Atomic JSON write: a failed run never leaves half a file, nor overwrites a good one with one. NaN and
    infinities, which JSON cannot hold, are written as null."""
    with open(path + ".tmp", "w") as f:
        json.dump(_finite(obj), f, indent=2, allow_nan=False, default=str)
    os.replace(path + ".tmp", path)
