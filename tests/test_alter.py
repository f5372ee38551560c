"""alter.py: a fresh adapter is a no-op, gradient isolation checked by gradients, inference routing, the
loss terms against their formulas, save/load, and an overfit check of Phase II on a tiny model.

Run: python -m pytest -q tests/test_alter.py
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from alter import (AlterConfig, GatedLM, Route, a_loss, attach, adapter_params, backward, cluster, load_adapter,
                   save_adapter, trainable_summary)
from losses import ihl, routing_ce, seq_logp, struct_kl
from entropy import head_entropy
from methods import hparams, method_loss, npo
from rmu import layer_output, rmu
from routing import gate_report
from model import GPT, GPTConfig

V = 61


def tiny(arch, seed=0):
    torch.manual_seed(seed)
    kw = dict(arch=arch, vocab_size=V, block_size=64, n_layer=2, n_head=4, n_embd=32)
    if arch == "llama":
        kw.update(n_kv_head=2, tie_word_embeddings=False)
    return GPT(GPTConfig(**kw)).eval()


def batch(B=4, T=10, seed=0, expert=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (B, T), generator=g)
    y = torch.randint(0, V, (B, T), generator=g)
    y[:, :3] = -100  # a prompt
    return {"x": x, "y": y, "mask": torch.ones(B, T, dtype=torch.long),
            "expert": torch.tensor(expert if expert is not None else [0, 1, 2, 0][:B])}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_fresh_adapter_is_a_noop_and_only_adapters_train(arch, capsys):
    model = tiny(arch)
    x = batch()["x"]
    with torch.no_grad():
        ref, _ = model(x)
    attach(model, AlterConfig(n_experts=4))
    print(trainable_summary(model))
    assert "trainable" in capsys.readouterr().out
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or ".router." in n for n in names)
    with torch.no_grad():
        for gate in ("entropy", "router"):
            got, _ = GatedLM(model, gate=gate)(x)
            assert (got - ref).abs().max() <= 1e-6
        with model.routing(Route("teacher", labels=torch.ones_like(x))):
            assert (model(x)[0] - ref).abs().max() <= 1e-6


def phase2_batch(model, rows=(1, 1, 2, 2, 0, 0), T=12, seed=0):
    """A Phase II batch as train.py builds it: prompts (unlabelled), answers whose tokens are a mix of high-
    and low-entropy ones, forget rows of sub-domains 1 and 2, retain rows (expert 0), right padding, and the
    base model's top-k log-probs at the labelled positions."""
    g = torch.Generator().manual_seed(seed)
    B = len(rows)
    x = torch.randint(0, V, (B, T), generator=g)
    y = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    y[:, :4] = -100  # the prompt
    y[1::2, -2:], mask[1::2, -2:] = -100, 0  # every other row is shorter: padding
    high = torch.rand(B, T, generator=g) > 0.5
    b = {"x": x, "y": y, "mask": mask, "expert": torch.tensor(rows), "high": high}
    with torch.no_grad(), model.routing(Route("off")):
        base = F.log_softmax(model(x, attention_mask=mask)[0][y != -100], -1)
    b["top_logp"], b["top_ids"] = torch.topk(base, 8, -1)
    return b


def nonzero_bs(model):
    """Every B (and router) made non-zero: a trained adapter, where each expert changes the forward pass."""
    with torch.no_grad():
        for n, p in adapter_params(model):
            if "lora_B" in n:
                p.normal_(std=0.1)


def term_grads(model, b, phase, gate):
    """{term: {param name: gradient}} for each named loss part of method_loss, one autograd.grad each."""
    b = {**b, "gate": gate}
    _, parts = method_loss("alter", phase, model, b, hparams())
    params = adapter_params(model)
    out = {}
    for k, v in parts.items():
        g = torch.autograd.grad(v, [p for _, p in params], retain_graph=True, allow_unused=True)
        out[k] = {n: torch.zeros_like(p) if gi is None else gi for (n, p), gi in zip(params, g)}
    return out


def b_norm(g, e):
    """Gradient norm of expert e's B summed over every adapted Linear."""
    return sum(t[e].norm().item() for n, t in g.items() if "lora_B" in n)


@pytest.mark.parametrize("gate", ["teacher", "soft"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_gradient_isolation_by_data_source(arch, gate):
    """Each loss term of method_loss, on a realistic batch, reaches exactly the experts the paper allows:
    B_fd only from forget rows of sub-domain d, B_r only from retain rows, in both phases. A loss on one
    position reaches earlier positions through attention, so this fails if isolation is per position."""
    model = tiny(arch)
    attach(model, AlterConfig(n_experts=3))
    trainable_summary(model)
    nonzero_bs(model)
    # the mixed batch: IHL (forget rows) never reaches B_r or the unused B_3; the retain NLL reaches B_r alone
    g = term_grads(model, phase2_batch(model), 2, gate)
    assert b_norm(g["ihl"], 0) == 0 and b_norm(g["ihl"], 3) == 0
    assert b_norm(g["ihl"], 1) > 0 and b_norm(g["ihl"], 2) > 0
    assert b_norm(g["retain"], 0) > 0 and all(b_norm(g["retain"], e) == 0 for e in (1, 2, 3))
    # forget rows of sub-domain 1 alone: no term reaches B_r, B_2 or B_3, in either phase
    for phase in (1, 2):
        g = term_grads(model, phase2_batch(model, rows=(1, 1, 1)), phase, gate)
        for term, gt in g.items():
            assert all(b_norm(gt, e) == 0 for e in (0, 2, 3)), (phase, term)
        if phase == 2:
            assert b_norm(g["ihl"], 1) > 0
        assert any(t.abs().max() > 0 for n, t in g["nll_high" if phase == 1 else "struct"].items() if "lora_A" in n)
    # retain rows alone: no term reaches a forget expert; Phase I trains B_r (and A) from them
    for phase in (1, 2):
        g = term_grads(model, phase2_batch(model, rows=(0, 0, 0)), phase, gate)
        for term, gt in g.items():
            assert all(b_norm(gt, e) == 0 for e in (1, 2, 3)), (phase, term)
        assert b_norm(g["nll_high" if phase == 1 else "retain"], 0) > 0


def a_grad_after_step(model, b, w, a_grad):
    """The gradient that a Phase II training step leaves on the lora_A tensors."""
    for _, p in adapter_params(model):
        p.grad = None
    loss, parts = method_loss("alter", 2, model, {**b, "a_grad": a_grad}, w)
    backward(model, loss, a_loss(parts, 2, w) if a_grad == "exact" else None)
    return torch.cat([p.grad.flatten() for n, p in adapter_params(model) if "lora_A" in n])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_learns_from_high_entropy_terms_only(arch):
    """Exact isolation of A: the gradient a Phase II step gives A does not change when the low-entropy terms
    change (the IHL weight, the targets of low-entropy forget and retain tokens), and it is not zero. The
    per-position detach ("position") lets them through attention: there it changes."""
    model = tiny(arch)
    attach(model, AlterConfig(n_experts=3))
    trainable_summary(model)
    nonzero_bs(model)
    b = phase2_batch(model)
    other = {**b, "y": torch.where(~b["high"] & (b["y"] != -100), (b["y"] + 1) % V, b["y"])}  # low targets changed
    for a_grad in ("exact", "position"):
        g = a_grad_after_step(model, b, hparams(), a_grad)
        g_beta = a_grad_after_step(model, b, hparams(beta=7.0), a_grad)
        g_low = a_grad_after_step(model, other, hparams(), a_grad)
        assert g.abs().max() > 0
        if a_grad == "exact":
            assert torch.equal(g, g_beta) and torch.equal(g, g_low)
        else:  # the leak the exact form removes
            assert not torch.allclose(g, g_beta) and not torch.allclose(g, g_low)
    # exact: A's gradient is that of a_loss alone; every other parameter gets the whole loss's gradient
    for _, p in adapter_params(model):
        p.grad = None
    loss, parts = method_loss("alter", 2, model, b, hparams())
    want = torch.autograd.grad(loss, [p for n, p in adapter_params(model) if "lora_A" not in n], retain_graph=True)
    backward(model, loss, a_loss(parts, 2, hparams()))
    got = [p.grad for n, p in adapter_params(model) if "lora_A" not in n]
    assert all(torch.allclose(a, c) for a, c in zip(got, want))


def test_inference_routing_top3_and_top1():
    model = tiny("llama")
    cfg = AlterConfig(n_experts=4)
    attach(model, cfg)
    for _, p in adapter_params(model):
        torch.nn.init.normal_(p, std=0.5)
    b = batch()
    high = torch.rand(4, 10, generator=torch.Generator().manual_seed(1)) > 0.5
    with model.routing(Route("entropy", high=high)) as route:
        model(b["x"])
    assert sorted(route.gates) == [0, 1]  # one set of gates per block
    for g in route.gates.values():  # (B, T, E)
        nz = (g > 0).sum(-1)
        assert (nz[high] == 3).all() and (nz[~high] == 1).all()
        assert torch.allclose(g.sum(-1), torch.ones_like(g[..., 0]))
    # GatedLM computes `high` from the base model's entropy: H > theta everywhere -> 3 experts everywhere
    seen = []
    handle = model.transformer.h[0].router.register_forward_hook(lambda m, i, out: seen.append(out))
    GatedLM(model, q=1.5, theta=-1.0)(b["x"])
    handle.remove()
    assert len(seen) == 1 and ((seen[0] > 0).sum(-1) == 3).all()


def forced_router(model, expert, E):
    """Every block's router made to pick `expert` whatever its input."""
    for r in model.routing.routers:
        torch.nn.init.zeros_(r.proj.weight)
        r.proj.bias.data = torch.full((E,), -20.0)
        r.proj.bias.data[expert] = 20.0


def qa_examples(lengths=((4, 9), (3, 7), (5, 10)), seed=0):
    """(ids, n_prompt) examples with random ids (no id 0, the pad id here)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(1, V, (n,), generator=g).tolist(), p) for p, n in lengths]


@pytest.mark.parametrize("gate", ["entropy", "router"])
def test_gate_report_on_a_router_forced_to_one_expert(gate):
    """A router that always picks expert 2: every answer token's top-1 is expert 2 in every block; a row labelled
    2 is routed right, a row labelled 1 wrong, and the high-entropy share is the base model's, token by token."""
    model = tiny("gpt2")
    attach(model, AlterConfig(n_experts=3))
    for _, p in adapter_params(model):
        torch.nn.init.normal_(p, std=0.5)
    forced_router(model, 2, 4)
    ex = qa_examples()
    n_ans = [len(ids) - p for ids, p in ex]  # answer tokens: positions n_prompt - 1 .. len - 2
    # the base model's entropy at the answer positions, and a theta between its values
    with model.routing(Route("off")):
        with torch.no_grad():
            H = [head_entropy(model.lm_head, model(torch.tensor([ids[:-1]]), hidden_only=True), 1.5)[0, p - 1:]
                 for ids, p in ex]
    theta = torch.cat(H).quantile(0.3).item()
    r = gate_report(GatedLM(model, theta=theta, gate=gate), ex, pad_id=0, labels=[2, 1, None], batch_size=2)
    assert r["tokens"] == sum(n_ans)
    assert r["high"] == pytest.approx((torch.cat(H) > theta).float().mean().item(), abs=1e-4) and 0 < r["high"] < 1
    assert r["usage"] == [0.0, 0.0, 1.0, 0.0] and r["low_to_forget"] == 1.0 and r["high_to_forget"] == 1.0
    assert r["low_to_forget_by_block"] == [1.0, 1.0]
    assert r["sub_domain_acc"] == pytest.approx(n_ans[0] / (n_ans[0] + n_ans[1]), abs=1e-4)
    low = [(h <= theta).sum().item() for h in H]
    assert r["sub_domain_acc_low"] == pytest.approx(low[0] / (low[0] + low[1]), abs=1e-4)
    forced_router(model, 0, 4)  # the retain expert: no token goes to a forget expert, no row to its sub-domain
    r = gate_report(GatedLM(model, theta=theta, gate=gate), ex, pad_id=0, labels=[2, 1, None])
    assert r["usage"][0] == 1.0 and r["low_to_forget"] == 0.0 and r["sub_domain_acc"] == 0.0


def test_oracle_gate_routes_each_forget_question_to_its_expert():
    """--gate oracle: a row holding a forget question takes its sub-domain expert at the low-entropy positions
    from the prompt's last token on, B_r everywhere else; other rows B_r. When scoring (prompt + answer) and when
    generating (left-padded prompt, then one position per new token)."""
    model = tiny("gpt2")
    attach(model, AlterConfig(n_experts=3))
    for _, p in adapter_params(model):
        torch.nn.init.normal_(p, std=0.5)
    (ids0, p0), (ids1, p1), _ = qa_examples()
    with pytest.raises(ValueError, match="sub-domains of the forget questions"):
        GatedLM(model, gate="oracle")
    x = torch.tensor([ids0[:-1], ids1[:-1] + [0] * (len(ids0) - len(ids1))])
    with model.routing(Route("off")), torch.no_grad():
        theta = head_entropy(model.lm_head, model(x, hidden_only=True), 1.5).median().item()
    lm = GatedLM(model, theta=theta, gate="oracle", experts={tuple(ids0[:p0]): 3})
    with torch.no_grad():
        lm(x)
    high, labels = lm.route.high, lm.route.labels
    assert 0 < high.float().mean() < 1
    want = torch.zeros_like(x)
    want[0, p0 - 1:] = torch.where(high[0, p0 - 1:], 0, 3)
    assert torch.equal(labels, want)
    for g in lm.route.gates.values():
        assert torch.equal(g, F.one_hot(want, 4).float())
    # generation: prompts left-padded to the same length; the prefill's last position and every new one answer
    seen = []
    forward = lm.forward

    def recorded(*a, **k):  # each pass's route
        out = forward(*a, **k)
        seen.append(lm.route)
        return out
    lm.forward = recorded
    ids2, p2 = qa_examples()[2]  # the longest prompt: the forget row is left-padded
    prompts = torch.tensor([[0] * (p2 - p0) + ids0[:p0], ids2[:p2]])
    am = (prompts != 0).long()
    with torch.no_grad():
        new = lm.generate(prompts, attention_mask=am, max_new_tokens=6, eos_token_id=[])
    assert new.shape == (2, 6) and len(seen) == 6
    prefill = seen[0]
    assert (prefill.labels[:, :-1] == 0).all() and (prefill.labels[1] == 0).all()
    assert prefill.labels[0, -1] == (0 if prefill.high[0, -1] else 3)
    steps = torch.cat([r.labels for r in seen[1:]], 1)  # (2, 5)
    steps_high = torch.cat([r.high for r in seen[1:]], 1)
    assert torch.equal(steps[0], torch.where(steps_high[0], 0, 3)) and (steps[1] == 0).all()
    lm.theta, seen[:] = 10.0, []  # every token low-entropy: the forget row is on expert 3 at every answer position
    with torch.no_grad():
        lm.generate(prompts, attention_mask=am, max_new_tokens=3, eos_token_id=[])
    assert [r.labels[:, -1].tolist() for r in seen] == [[3, 0]] * 3


def test_route_holds_for_its_scope_only():
    """A route applies inside its `with` block and nowhere else: afterwards (also after an error, and after a
    nested scope) the adapters route as before; outside every scope, by the dense router softmax."""
    model = tiny("gpt2")
    attach(model, AlterConfig(n_experts=2))
    for _, p in adapter_params(model):
        torch.nn.init.normal_(p, std=0.5)
    x = batch()["x"]
    with torch.no_grad():
        dense, _ = model(x)
        with model.routing(Route("off")):
            off, _ = model(x)
            with model.routing(Route("router")):
                assert torch.equal(model(x)[0], dense)
            assert torch.equal(model(x)[0], off)  # the outer scope again
        with pytest.raises(RuntimeError):
            with model.routing(Route("off")):
                raise RuntimeError
        assert torch.equal(model(x)[0], dense) and not torch.allclose(off, dense)
        assert model.routing.route.mode == "router"


def test_losses_equal_their_formulas():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    y = torch.tensor([[1, 4, -100], [0, -100, 6]])
    where = y != -100
    p = logits.softmax(-1)
    # IHL = 1 + p(y) - max_{v != y} p(v), by hand
    vals = []
    for b, t in zip(*where.nonzero(as_tuple=True)):
        pt = p[b, t, y[b, t]]
        other = torch.cat((p[b, t, :y[b, t]], p[b, t, y[b, t] + 1:])).max()
        vals.append(1 + pt - other)
    assert torch.allclose(ihl(logits, y, where), torch.stack(vals).mean())
    # NPO = (2/beta) mean log(1 + (pi/pi_ref)^beta) over forget rows
    ref = torch.tensor([-3.0, -5.0])
    lp = seq_logp(logits, y)
    by_hand = torch.log(p[0, 0, 1]) + torch.log(p[0, 1, 4])
    assert torch.allclose(lp[0], by_hand)
    expected = (2 / 0.1) * torch.log(1 + torch.exp(0.1 * (lp - ref))).mean()
    assert torch.allclose(npo(logits, y, ref, torch.tensor([True, True]), 0.1), expected)
    # structural KL on the base model's top-k support; zero when the model equals the base
    base = torch.randn(2, 3, 7)
    top = torch.topk(F.log_softmax(base[where], -1), 7, -1)
    kl_full = (F.softmax(base[where], -1) * (F.log_softmax(base[where], -1) - F.log_softmax(logits[where], -1)))
    kl_full = kl_full.sum(-1).mean()
    assert torch.allclose(struct_kl(logits, top.indices, top.values, where), kl_full, atol=1e-6)  # k = V: exact
    top3 = torch.topk(F.log_softmax(base[where], -1), 3, -1)
    assert struct_kl(base, top3.indices, top3.values, where).abs() < 1e-7


def test_rmu_loss_equals_its_formula():
    """RMU on hand-made activations: forget tokens pulled to u, retain tokens to the frozen activations, each a
    squared error averaged over d, then over the tokens of its mask; padding and prompt tokens count nowhere."""
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]], [[0.0, 1.0], [2.0, 2.0], [7.0, 7.0]]])
    h_ref = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [2.0, 0.0], [5.0, 5.0]]])
    u = torch.tensor([1.0, 0.0])
    forget = torch.tensor([[True, True, False], [False, False, False]])  # row 0: forget, last token padding
    retain = torch.tensor([[False, False, False], [True, True, False]])  # row 1: retain
    f, r = rmu(h, u, h_ref, forget, retain, alpha=10.0)
    # forget: ((1-1)^2 + (2-0)^2)/2 = 2 and ((3-1)^2 + 4^2)/2 = 10 -> mean 6
    # retain: ((0-1)^2 + (1-1)^2)/2 = 0.5 and (0 + 2^2)/2 = 2 -> mean 1.25, times alpha
    assert f.item() == 6.0 and r.item() == 12.5
    # rmu_loss reads the block's output through a hook: the same activations as a manual forward
    model = tiny("llama")
    x = torch.randint(0, 64, (2, 5))
    seen = []
    handle = model.transformer.h[1].register_forward_hook(lambda m, i, o: seen.append(o))
    model(x)
    handle.remove()
    assert torch.equal(layer_output(model, 1, x, torch.ones_like(x)), seen[0])


def router_input_by_hand(z, mask):
    """[z_t, mean of z_s over the row's first unmasked position <= s <= t], position by position."""
    B, T, C = z.shape
    mean = torch.zeros_like(z)
    for b in range(B):
        first = mask[b].tolist().index(1)
        for t in range(first, T):
            mean[b, t] = z[b, first:t + 1].mean(0)
    return torch.cat((z, mean), -1)


@pytest.mark.parametrize("router_input", ["prefix", "token"])
def test_routing_ce_formula(router_input):
    """The routing cross-entropy, and what the router reads: the token's normalised block input, with
    router_input "prefix" also the running mean of the row's unpadded tokens up to it."""
    model = tiny("gpt2")
    attach(model, AlterConfig(n_experts=2, router_input=router_input))
    b = batch()
    b["mask"][1, 6:] = 0  # a right-padded row
    b["mask"][2, :3] = 0  # a left-padded one
    b["mask"][2, 5] = 0   # a token the attention mask hides inside a row (still counted by the router)
    labels = b["expert"][:, None].expand_as(b["x"])
    with model.routing(Route("teacher", labels=labels, mask=b["mask"])) as route:
        model(b["x"], attention_mask=b["mask"])
    where = b["mask"].bool()
    inputs = lambda z: router_input_by_hand(z, b["mask"]) if router_input == "prefix" else z
    by_hand = torch.stack([-F.log_softmax(blk.router.proj(inputs(blk.ln_1(h))), -1).gather(-1, labels[..., None])[
        where].mean() for blk, h in zip(model.transformer.h, block_inputs(model, b["x"], b["mask"]))]).mean()
    assert torch.allclose(routing_ce(route, labels, where), by_hand, atol=1e-6)


def test_gated_generation_with_a_cache_equals_recomputing_each_step():
    """GatedLM.generate (KV cache, left-padded prompts): the routers' running means carry from step to step and
    leave padding out, so each new token equals the argmax of a full, uncached pass over prompt + tokens so far."""
    model = tiny("llama")
    attach(model, AlterConfig(n_experts=3))
    for _, p in adapter_params(model):
        torch.nn.init.normal_(p, std=0.5)
    prompts = torch.tensor([[0, 0, 5, 9, 14], [7, 3, 8, 2, 11]])
    am = (prompts != 0).long()
    for gate in ("entropy", "router"):
        lm = GatedLM(model, theta=1.0, gate=gate)
        with torch.no_grad():
            new = lm.generate(prompts, attention_mask=am, max_new_tokens=5, eos_token_id=[])
            x, m = prompts, am
            for k in range(5):
                pos = (m.cumsum(-1) - 1).clamp(min=0)
                logits, _ = lm(x, attention_mask=m, position_ids=pos)
                nxt = logits[:, -1].argmax(-1)
                assert torch.equal(nxt, new[:, k]), (gate, k)
                x, m = torch.cat((x, nxt[:, None]), 1), torch.cat((m, torch.ones_like(m[:, :1])), 1)
            alone = lm.generate(prompts[:1, 2:], max_new_tokens=5, eos_token_id=[])  # the padded row, unpadded
            assert torch.equal(alone[0], new[0]), gate


def block_inputs(model, x, attention_mask=None):
    """The input of every block in a forward pass (adapters off: B = 0 here, so the same pass)."""
    seen = []
    hooks = [blk.register_forward_pre_hook(lambda m, args: seen.append(args[0])) for blk in model.transformer.h]
    model(x, attention_mask=attention_mask)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_save_load_reproduces_logits(arch, tmp_path):
    model = tiny(arch)
    base = copy.deepcopy(model)
    attach(model, AlterConfig(n_experts=3))
    for _, p in adapter_params(model):
        torch.nn.init.normal_(p, std=0.3)
    path = str(tmp_path / "adapter.safetensors")
    save_adapter(model, path)
    load_adapter(base, path)
    x = batch()["x"]
    for gate in ("entropy", "router"):
        assert torch.equal(GatedLM(model, gate=gate)(x)[0], GatedLM(base, gate=gate)(x)[0])
    other = tiny("gpt2" if arch == "llama" else "llama")
    with pytest.raises(ValueError, match="adapter does not fit this base model"):
        load_adapter(other, path)


def test_cluster_separates_two_groups():
    model = tiny("gpt2")
    a = [([1, 2, 3, 4, 5, 6], 3)] * 3
    b = [([50, 51, 52, 53, 54, 55], 3)] * 3
    labels = cluster(model, a + b, 2, pad_id=0)
    assert sorted(set(labels)) == [1, 2] and len(set(labels[:3])) == 1 and len(set(labels[3:])) == 1
    assert cluster(model, a[:1], 4, pad_id=0) == [1]  # N capped by the number of examples


def test_phase2_overfit_forgets_and_keeps_retain():
    torch.manual_seed(0)
    model = tiny("gpt2")
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, V, (8, 12), generator=g)
    full = {"x": seqs[:, :-1], "y": seqs[:, 1:].clone(), "mask": torch.ones(8, 11, dtype=torch.long),
            "expert": torch.tensor([0] * 6 + [1, 2])}
    full["y"][:, :3] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):  # the "target": a model that knows all 8 sequences
        loss = model(full["x"], targets=full["y"])[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    attach(model, AlterConfig(n_experts=2))
    trainable_summary(model)
    full["high"] = torch.zeros(8, 11, dtype=torch.bool)
    full["high"][:, 3::3] = True
    lab = full["y"] != -100
    full["top_ids"] = torch.zeros(int(lab.sum()), 4, dtype=torch.long)
    with torch.no_grad(), model.routing(Route("off")):
        full["top_logp"], full["top_ids"] = torch.topk(F.log_softmax(model(full["x"])[0][lab], -1), 4, -1)
    groups = [{"params": [p for n, p in adapter_params(model) if "lora_A" in n], "lr": 1e-5},
              {"params": [p for n, p in adapter_params(model) if "lora_A" not in n], "lr": 1e-2}]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    parts0 = None
    for step in range(300):
        loss, parts = method_loss("alter", 2, model, full, hparams())
        parts0 = parts0 or {k: v.item() for k, v in parts.items()}
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert parts["ihl"].item() < 0.5 * parts0["ihl"], (parts0, parts)
    assert parts["retain"].item() <= 1.1 * parts0["retain"] + 0.01, (parts0, parts)
