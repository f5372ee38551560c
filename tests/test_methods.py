"""methods.py: every entry of METHODS prepares, takes a training step of each of its phases on a tiny model, and
trains exactly the parameters its optimizer groups name; every method flag refuses a value out of its range.
A method added to METHODS is tested here without an edit.

Run: python -m pytest -q tests/test_methods.py
"""
import pytest
import torch

import plan
import train
from data.batching import collate
from methods import METHODS, UnlearningData, method_flags
from model import GPT, GPTConfig

ALL_FLAGS = train.FLAGS + tuple(method_flags().values())

V = 61


def toy_data(seed=0):
    """Six forget and six retain question-answer examples: (ids, n_prompt), a 3-token prompt each."""
    g = torch.Generator().manual_seed(seed)
    ex = [(torch.randint(1, V, (int(torch.randint(6, 12, (1,), generator=g)),), generator=g).tolist(), 3)
          for _ in range(12)]
    return UnlearningData(ex[:6], ex[6:], pad_id=0)


def request(name):
    """train.py's flags for this method, with the toy benchmark's defaults filled in, as plan.plan does."""
    args = train.parser.parse_args(["--method", name, "--n-experts", "2"])
    for k, v in plan.DEFAULTS["toy"].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.cache = None
    return args


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_what_its_groups_name(name):
    torch.manual_seed(0)
    model = GPT(GPTConfig(arch="gpt2", vocab_size=V, block_size=64, n_layer=2, n_head=4, n_embd=32)).eval()
    data, args, method = toy_data(), request(name), METHODS[name]
    run = method.prepare(model, data, args, "cpu", lambda *a: None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grouped = set()
    for phase, _ in method.phases(args):
        groups = method.groups(model, phase, args)
        assert all(g["lr"] > 0 for g in groups), (name, phase)
        if name == "alter":  # the shared A moves at lr_A in Phase II only (paper: 1e-5), at lr_B in Phase I
            assert groups[0]["lr"] == (args.lr_a if phase == 2 else args.lr_b) and groups[1]["lr"] == args.lr_b
            assert groups[2]["lr"] == args.lr_router and all(".router." in n for n, p in model.named_parameters()
                                                             if any(p is q for q in groups[2]["params"]))
        grouped |= {id(p) for g in groups for p in g["params"]}
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        fidx, ridx = [0, 1, 2], [3, 4, 5]
        b = collate([data.forget[i] for i in fidx] + [data.retain[i] for i in ridx], data.pad_id)
        b["expert"] = torch.tensor([run.get("expert", [1] * 6)[i] for i in fidx] + [0] * 3)
        method.add_to_batch(b, run, fidx, ridx)
        loss, parts = method.loss(model, b, phase, args)
        assert torch.isfinite(loss) and parts, (name, phase, parts)
        opt.zero_grad(set_to_none=True)
        method.backward(model, loss, parts, phase, args)
        opt.step()
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    changed = {id(p) for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert trainable == grouped, f"{name}: parameters marked trainable are not those the optimizer gets"
    assert changed and changed <= grouped, f"{name}: a step changed nothing, or something outside its groups"


def test_every_method_flag_refuses_values_out_of_range(capsys):
    """Each method flag with a range (Flag.at_least, positive, between) is refused below it by check_args,
    with exit code 2 and the flag named."""
    checked = 0
    for f in method_flags().values():
        bad = f.at_least - 1 if f.at_least is not None else 0 if f.positive else \
            f.between[1] if f.between else None
        if bad is None:
            continue
        with pytest.raises(SystemExit) as e:
            plan.check_args(train.parser.parse_args([f"{f.name}={bad}"]), ALL_FLAGS)
        assert e.value.code == 2 and f.name in capsys.readouterr().err, f.name
        checked += 1
    assert checked >= 10
