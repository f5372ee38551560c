"""entropy.py: Tsallis entropy against its closed forms and the Shannon limit, numerical safety on a
50,257-token vocabulary, the threshold fallback, and the on-disk profile cache (counted forwards).

Run: python -m pytest -q tests/test_entropy.py
"""
import math

import pytest
import torch

from entropy import profile, threshold, tsallis
from model import GPT, GPTConfig


def shannon(logits):
    p = torch.softmax(logits.double(), -1)
    return -(p * p.log()).nan_to_num().sum(-1)


def test_shannon_limit_and_continuity():
    torch.manual_seed(0)
    logits = torch.randn(7, 1000) * 3
    H = shannon(logits).float()
    assert torch.allclose(tsallis(logits, 1.0), H, atol=1e-5)
    p = torch.softmax(logits.double(), -1)
    for q in (1 - 1e-4, 1 + 1e-4, 0.5, 1.5, 2.0):  # against the definition in float64
        exact = (1 - (p ** q).sum(-1)) / (q - 1)
        assert torch.allclose(tsallis(logits, q).double(), exact, atol=2e-5), q
    # continuity: dS_q/dq at q = 1 is -1/2 sum p (log p)^2, so the gap depends on the distribution;
    # for next-token distributions of up to ~2 nats it is below 1e-3 at q = 1 +- 1e-4
    peaked = torch.randn(7, 50257) * 8
    for q in (1 - 1e-4, 1 + 1e-4):
        assert (tsallis(peaked, q) - tsallis(peaked, 1.0)).abs().max() < 1e-3


@pytest.mark.parametrize("q", [0.5, 1.0, 1.5, 2.0, 3.0])
def test_closed_forms(q):
    V = 50257
    one_hot = torch.full((V,), -1e4)
    one_hot[123] = 1e4
    assert tsallis(one_hot, q).abs().item() < 1e-6
    uniform = torch.zeros(V)
    expected = math.log(V) if q == 1 else (1 - V ** (1 - q)) / (q - 1)
    assert abs(tsallis(uniform, q).item() - expected) < 1e-4 * max(1, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("q", [0.5, 1.0, 1.0001, 1.5])
def test_no_nan_or_inf_with_extreme_logits(q, dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randint(0, 2, (4, 50257), generator=g) * 2e4 - 1e4).to(dtype)  # only +-1e4
    logits[1] = 1e4  # all tied at the top: uniform
    logits[2, :] = -1e4
    logits[2, 7] = 1e4  # one-hot
    S = tsallis(logits, q)
    assert torch.isfinite(S).all() and (S >= -1e-6).all()
    assert S[2].abs() < 1e-6


def test_threshold_absolute_quantile_and_fallback():
    H = torch.linspace(0, 2, 101)
    t, frac, note = threshold(H, theta=1.2)
    assert t == 1.2 and abs(frac - 0.4) < 0.011 and note == "absolute"
    t, frac, _ = threshold(H, quantile=0.75)
    assert abs(t - 1.5) < 1e-6
    low = torch.linspace(0, 0.5, 100)  # theta = 1.2 marks nothing high: fall back to the 0.95 quantile
    t, frac, note = threshold(low, theta=1.2)
    assert 0.04 <= frac <= 0.06 and "fell back" in note


def test_profile_is_cached(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    examples = [([1, 2, 3, 4, 5], 2), ([6, 7, 8], 1), ([9, 10, 11, 12], 3)]
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    a = profile(model, examples, q=1.5, cache_dir=str(tmp_path), topk=4)
    n = len(calls)
    assert n >= 1
    b = profile(model, examples, q=1.5, cache_dir=str(tmp_path), topk=4)
    assert len(calls) == n, "second profile ran a forward pass"
    assert all(torch.equal(x["H"], y["H"]) for x, y in zip(a, b))
    assert [len(x["H"]) for x in a] == [4, 2, 3]  # one entropy per input position
    assert [len(x["top_ids"]) for x in a] == [3, 2, 1]  # top-k at the labelled positions
    profile(model, examples, q=2.0, cache_dir=str(tmp_path), topk=4)
    assert len(calls) > n, "another q must not reuse the cache"
    # aligned with the model: H at position t is the entropy of the logits at t
    logits, _ = model(torch.tensor([examples[0][0][:-1]]))
    assert torch.allclose(a[0]["H"], tsallis(logits[0], 1.5), atol=1e-6)
