"""The speed mechanics give the same numbers as the plain computation: logits only at the kept positions, the
gate's entropy a chunk at a time, Linear weights held in bf16 for a scope under bf16 autocast, ALTER's one-matmul
isolation by data source, the training losses and the entropy profile on the labelled positions' logits alone;
evaluation never asks for the (B, T, V) logits; --dtype auto and --threads choose as documented; freed memory is
kept (no page faults for a buffer allocated again).

Run: python -m pytest -q tests/test_speed.py
"""
import argparse
import os
import platform
import subprocess
import sys

import pytest
import torch

import inference
import plan
import torch.nn.functional as F

from alter import AlterConfig, GatedLM, OwnExperts, Route, adapter_params, attach
from losses import at, forget_ihl, nll, routing_ce, struct_kl
from entropy import head_entropy, profile, tsallis
from methods import hparams, method_loss
from model import GPT, GPTConfig, linear_weights_in


def tiny(arch="llama", seed=0):
    torch.manual_seed(seed)
    kw = dict(n_kv_head=2, intermediate_size=80) if arch == "llama" else {}
    return GPT(GPTConfig(arch=arch, vocab_size=101, block_size=64, n_layer=2, n_head=4, n_embd=32,
                         eos_token_id=[2], **kw)).eval()


def trained_adapter(model):
    """A 4-expert adapter with nonzero B (a fresh one is a no-op, which would hide any error)."""
    attach(model, AlterConfig(n_experts=4))
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or ".router." in n:
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_kept_positions_equal_the_full_logits(arch):
    m = tiny(arch)
    x = torch.randint(0, 101, (3, 10))
    am = torch.ones_like(x)
    am[1, :3] = 0
    y = torch.randint(0, 101, (3, 10))
    y[:, :4] = -100
    with torch.no_grad():
        full, loss = m(x, attention_mask=am, targets=y)
        keep = y != -100
        part, loss_kept = m(x, attention_mask=am, targets=y, keep=keep)
        last, _ = m(x, attention_mask=am, keep=(slice(None), -1))
    assert part.shape == (int(keep.sum()), 101) and torch.equal(part, full[keep])
    assert torch.allclose(loss_kept, loss)
    assert torch.equal(last, full[:, -1])


def test_gated_lm_keeps_positions_and_chunks_the_entropy():
    """GatedLM = the base model's full logits -> S_q -> the entropy-routed adapted pass, written out here."""
    m = trained_adapter(tiny())
    x = torch.randint(0, 101, (2, 12))
    with torch.no_grad(), m.routing(Route("off")):
        base, _ = m(x)
        h = m(x, hidden_only=True)
    S = tsallis(base, 1.5)
    theta = S.median().item()  # half the tokens high, half low: the gate matters
    with torch.no_grad(), m.routing(Route("entropy", high=S > theta)):
        ref, _ = m(x)
    gated = GatedLM(m, q=1.5, theta=theta)
    keep = torch.zeros_like(x, dtype=torch.bool)
    keep[:, 6:] = True
    with torch.no_grad():
        full, _ = gated(x)
        part, _ = gated(x, keep=keep)
        router, _ = GatedLM(m, gate="router")(x)
    assert torch.allclose(full, ref, atol=1e-6) and not torch.allclose(full, router, atol=1e-3)
    assert torch.equal(part, full[keep])
    assert torch.allclose(head_entropy(m.lm_head, h, 1.5, chunk=5), S, atol=1e-6)


def test_own_experts_equals_the_two_matmul_isolation_under_bf16():
    """alter.OwnExperts (one matmul) against z_own @ B + z_other @ B.detach(): output and both gradients."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, 4 * 2, generator=g, requires_grad=True)
    B = torch.randn(4 * 2, 7, generator=g, requires_grad=True)
    rows = torch.tensor([0, 2, 3])
    own = torch.nn.functional.one_hot(rows, 4).repeat_interleave(2, dim=1)[:, None, :]
    dy = torch.randn(3, 5, 7, generator=g)
    for bf16 in (False, True):
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            got = OwnExperts.apply(z, B, own)
            ref = (z * own) @ B + (z * (1 - own)) @ B.detach()
        gz, gB = torch.autograd.grad(got, (z, B), dy)
        rz, rB = torch.autograd.grad(ref, (z, B), dy)
        tol = 5e-2 if bf16 else 1e-5
        assert gB.dtype == torch.float32 and torch.allclose(got, ref, atol=tol)
        assert torch.allclose(gz, rz, atol=tol) and torch.allclose(gB, rB, atol=tol, rtol=tol)


def test_linear_weights_cast_once_give_autocasts_numbers():
    m = trained_adapter(tiny("gpt2"))
    tied = m.lm_head.weight
    x = torch.randint(0, 101, (2, 9))
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        ref, _ = GatedLM(m)(x)
        with linear_weights_in(m, "bfloat16"):
            assert m.lm_head.weight.dtype == torch.bfloat16 and m.transformer.wte.weight.dtype == torch.float32
            got, _ = GatedLM(m)(x)
    assert torch.equal(got, ref)
    assert m.lm_head.weight is tied and m.transformer.wte.weight is tied  # restored, still tied
    with linear_weights_in(m, "float32"):
        assert m.lm_head.weight is tied  # float32: nothing cast


def test_evaluation_never_asks_for_every_positions_logits():
    """token_logps, last_logits and generate read a few positions: each forward must say which (keep)."""
    m = tiny("gpt2")
    calls = []

    class Spy(torch.nn.Module):
        config = m.config

        def forward(self, idx, **kw):
            calls.append(kw.get("keep") is not None)
            return m(idx, **kw)

        def new_cache(self):
            return m.new_cache()
        generate = GPT.generate

    spy = Spy()
    calls_shape = []

    def record(module, inputs, output):
        x = inputs[0]  # (B, T); one new token per row (T = 1) in generation after the prompt
        calls_shape.append(output[0].dim() == 2 and (output[0].size(0) < x.numel() or x.size(1) == 1))
    spy.register_forward_hook(record)
    examples = [([5, 6, 7, 8, 9], 3), ([5, 6, 7], 1)]
    inference.token_logps(spy, examples, pad_id=0)
    inference.last_logits(spy, [[5, 6, 7], [8, 9]], pad_id=0)
    spy.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, eos_token_id=[])
    assert calls and all(calls), calls
    assert all(calls_shape), calls_shape  # (n, V) logits for fewer positions than the batch holds


def full_logits_parts(method, m, b):
    """The method's loss parts written on the full (B, T, V) logits with (B, T) masks (as they were computed
    before the output layer ran at the labelled positions alone); "alter1" is ALTER's Phase I."""
    lab = b["y"] != -100
    forget, retain = (b["expert"] > 0)[:, None] & lab, (b["expert"] == 0)[:, None] & lab
    rows = b["expert"][:, None].expand_as(lab)
    labels = torch.where(lab, rows, 0)
    y = b["y"]
    if method in ("gd", "ga"):
        logits, _ = m(b["x"], attention_mask=b["mask"])
        return {"forget_nll": nll(logits, y, forget), **({"retain": nll(logits, y, retain)} if method == "gd" else {})}
    high = b["high"] if method.startswith("alter") else None
    if method == "alter1":  # Phase I: every gate on B_r, NLL on the high-entropy answer tokens
        with m.routing(Route("teacher", labels=torch.zeros_like(labels), high=high, rows=b["expert"],
                             mask=b["mask"])):
            logits, _ = m(b["x"], attention_mask=b["mask"])
        return {"nll_high": nll(logits, y, lab & high)}
    with m.routing(Route("teacher", labels=labels, high=high, rows=b["expert"] if high is not None else None,
                         mask=b["mask"])) as route:
        logits, _ = m(b["x"], attention_mask=b["mask"])
    parts = {"retain": nll(logits, y, retain), "route": routing_ce(route, labels, b["mask"].bool())}
    if method == "asymlora":
        return {"ihl": forget_ihl(logits, y, forget, rows), **parts}
    sel = high[lab]
    return {"ihl": forget_ihl(logits, y, forget & ~high, rows), **parts,
            "struct": struct_kl(logits, b["top_ids"][sel], b["top_logp"][sel], lab & high),
            "retain_high": nll(logits, y, retain & high) * (retain & high).sum() / retain.sum()}


@pytest.mark.parametrize("method", ["alter", "alter1", "asymlora", "gd", "ga"])
def test_training_losses_run_the_output_layer_at_labelled_positions_only(method):
    """Each method's loss parts and gradients equal the same terms on the full logits, and its output layer
    sees the labelled positions alone."""
    m = trained_adapter(tiny("gpt2")) if method not in ("gd", "ga") else tiny("gpt2")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 101, (4, 12), generator=g)
    y = torch.randint(0, 101, (4, 12), generator=g)
    mask = torch.ones_like(x)
    y[:, :5] = -100  # prompts
    y[1::2, -3:], mask[1::2, -3:] = -100, 0  # shorter rows: padding
    lab = y != -100
    b = {"x": x, "y": y, "mask": mask, "expert": torch.tensor([1, 0, 2, 0]),
         "high": torch.rand(4, 12, generator=g) > 0.6, "gate": "teacher"}
    if method.startswith("alter"):  # the base model's top-k at the labelled positions (struct_kl)
        with torch.no_grad(), m.routing(Route("off")):
            b["top_logp"], b["top_ids"] = torch.topk(F.log_softmax(m(x, attention_mask=mask)[0][lab], -1), 8, -1)
    params = [p for _, p in adapter_params(m)] if method not in ("gd", "ga") else list(m.parameters())
    rows_seen = []
    hook = m.lm_head.register_forward_hook(lambda mod, inp, out: rows_seen.append(inp[0].shape[:-1].numel()))
    _, parts = method_loss(method.rstrip("1"), 1 if method == "alter1" else 2, m, b, hparams())
    hook.remove()
    ref = full_logits_parts(method, m, b)
    assert rows_seen == [int(lab.sum())]
    assert ref.keys() <= parts.keys() and all(ref[k] > 0 for k in ref)
    for k in ref:
        got = torch.autograd.grad(parts[k], params, retain_graph=True, allow_unused=True)
        want = torch.autograd.grad(ref[k], params, retain_graph=True, allow_unused=True)
        assert torch.allclose(parts[k], ref[k], atol=1e-6), k
        assert all((a is None and c is None) or torch.allclose(a, c, atol=1e-6) for a, c in zip(got, want)), k


def test_rows_at_a_mask_go_back_by_index_select():
    """losses.at is t[where] with the backward of index_select (boolean indexing's is an accumulating index_put)."""
    t = torch.randn(3, 5, 7, requires_grad=True)
    where = torch.rand(3, 5, generator=torch.Generator().manual_seed(0)) > 0.5
    rows = at(t, where)
    assert torch.equal(rows, t[where]) and rows.grad_fn.name() == "IndexSelectBackward0"
    (g,) = torch.autograd.grad((rows * torch.arange(7.)).sum(), t)
    assert torch.equal(g, where[..., None] * torch.arange(7.))


def test_entropy_profile_never_builds_every_positions_logits():
    """profile's entropies and top-k equal the full logits' (tsallis and log_softmax written out), while its
    output layer runs on rows of positions (head_entropy's chunks, a row's labelled positions), never (B, T)."""
    m = tiny("gpt2")
    examples = [([5, 6, 7, 8, 9, 10, 11], 3), ([5, 6, 7, 8], 1), ([9, 8, 7, 6, 5, 4], 4)]
    dims = []
    hook = m.lm_head.register_forward_hook(lambda mod, inp, out: dims.append(inp[0].dim()))
    got = profile(m, examples, q=1.5, topk=4)
    hook.remove()
    assert dims and all(d == 2 for d in dims)  # (positions, C) rows, never the batch's (B, T, C)
    for (ids, n_prompt), item in zip(examples, got):
        with torch.no_grad():
            logits, _ = m(torch.tensor([ids[:-1]]))
        assert torch.allclose(item["H"], tsallis(logits[0], 1.5), atol=1e-6)
        top = torch.topk(F.log_softmax(logits[0, n_prompt - 1:], -1), 4, -1)
        assert torch.equal(item["top_ids"], top.indices.int())
        assert torch.allclose(item["top_logp"].float(), top.values, atol=1e-2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_kept():
    """A 64 MB buffer freed and allocated again costs its pages again (page faults) unless keep_freed_memory
    has told malloc to keep it: measured in fresh processes, with and without; release_freed_memory hands the
    kept memory back (resident memory falls)."""
    import resource  # Unix only
    code = ("import resource, sys, torch, plan\n"
            "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()\n"
            "kept = plan.keep_freed_memory() if sys.argv[1] == '1' else None\n"
            "torch.ones(16 << 20)\n"
            "f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(10):\n"
            "    torch.ones(16 << 20)\n"
            "faults, before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f, rss()\n"
            "plan.release_freed_memory()\n"
            "print(kept, faults, before - rss())\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = lambda keep: subprocess.run([sys.executable, "-c", code, keep], capture_output=True, text=True, cwd=root,
                                      check=True).stdout.split()
    kept, faults, released = run("1")
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert kept == "True"
    _, faults_default, _ = run("0")
    pages = 10 * (64 << 20) // resource.getpagesize()  # 10 buffers of 64 MB
    thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read() \
        if os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled") else ""
    assert int(faults) < pages // 4
    assert int(faults_default) > pages // 2 or "[always]" in thp  # huge pages: few faults either way
    assert int(released) > 32 << 20


def test_a_training_run_keeps_freed_memory(monkeypatch):
    """train.py's start (device, dtype, seeds) is where malloc is told to keep freed memory, for the device, and
    where oneDNN's kernel cache is bounded (before any bf16 product); a value the user set wins."""
    import train
    calls = []
    monkeypatch.setattr(train, "keep_freed_memory", calls.append)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "")  # recorded, so restored after the test
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    train.start(argparse.Namespace(device="cpu", dtype="float32", seed=0), argparse.Namespace(width=128))
    assert calls == ["cpu"]
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(plan.KERNEL_CACHE)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "7")
    plan.limit_kernel_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7"


def test_auto_dtype_and_threads(monkeypatch):
    args = argparse.Namespace(device="cpu", dtype="auto", threads=0)
    monkeypatch.setattr(plan, "native_bf16_cpu", lambda: True)
    assert plan.device_and_dtype(args, 576) == ("cpu", "bfloat16")
    assert plan.device_and_dtype(args, None) == ("cpu", "bfloat16")
    assert plan.device_and_dtype(args, 128) == ("cpu", "float32")  # the toy's model: bf16 does not pay
    monkeypatch.setattr(plan, "native_bf16_cpu", lambda: False)
    assert plan.device_and_dtype(args, 576) == ("cpu", "float32")
    assert plan.device_and_dtype(argparse.Namespace(device="cpu", dtype="bfloat16"), 128) == ("cpu", "bfloat16")
    assert 0 <= plan.busy_cores(0.05) <= len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        assert plan.set_threads(argparse.Namespace(threads=1)) == (1, "--threads") and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        n, why = plan.set_threads(argparse.Namespace(threads=0))
        assert 1 <= n <= before and torch.get_num_threads() == n and why
        monkeypatch.setattr(plan, "busy_cores", lambda seconds=0.2: 1)  # one busy core: one thread fewer
        cores = min(len(os.sched_getaffinity(0)), plan.cpu_quota() or 10**6, plan.TORCH_THREADS)
        assert plan.set_threads(argparse.Namespace(threads=0))[0] == max(1, cores - 1)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert plan.set_threads(argparse.Namespace(threads=0))[1] == "OMP_NUM_THREADS"
    finally:
        torch.set_num_threads(before)


def test_last_logits_batched_equal_transformers_one_by_one(tmp_path):
    """Multiple choice reads the last prompt position of right-padded, length-sorted batches without an attention
    mask: equal to transformers on each prompt alone."""
    transformers = pytest.importorskip("transformers")
    tiny().save_pretrained(tmp_path)
    ours = GPT.from_pretrained(str(tmp_path), verbose=False).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 101, (n,), generator=g).tolist() for n in (7, 3, 12, 12, 5, 9)]
    got = inference.last_logits(ours, prompts, pad_id=0, batch_size=4)
    with torch.no_grad():
        ref = torch.stack([theirs(torch.tensor([p])).logits[0, -1] for p in prompts])
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
