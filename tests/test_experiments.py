"""The experiment scripts' own logic: toy_tune.py's selection rule and table.py's statistics and paired wins.

Run: python -m pytest -q tests/test_experiments.py
"""
import json
import os
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import table  # noqa: E402
import toy_tune  # noqa: E402


def test_selection_rule():
    """The best forget quality among the settings that keep >= 0.9 x the target's utility (ties: the forget
    probability nearest the retain model's, then utility); when none does, the best utility."""
    row = lambda fq, mu, p=0.1: {"forget_quality": fq, "model_utility": mu, "forget_Q_A_Prob": p}
    r = {"a": row(0.9, 0.5), "b": row(0.4, 0.95), "c": row(0.4, 0.99), "d": row(0.1, 1.0)}
    assert toy_tune.select(r, 1.0, 0.1) == "c"       # a fails the floor; b and c tie on FQ and prob: utility
    assert toy_tune.select(r, 0.5, 0.1) == "a"       # all pass: the best FQ
    r = {"mild": row(0.9, 0.99, 0.8), "near": row(0.9, 0.95, 0.2), "past": row(0.9, 0.97, 0.01)}
    assert toy_tune.select(r, 1.0, 0.1) == "near"    # an FQ tie: forget prob 0.2 is nearest 0.1 (log 2 vs 2.3)
    assert toy_tune.select({"a": row(0.9, 0.1), "b": row(0.1, 0.3)}, 1.0, 0.1) == "b"  # none passes: the best MU
    assert len(toy_tune.settings("alter")) == 6 and all(len(toy_tune.settings(m)) == 6 for m in toy_tune.GRID)


def test_seed_table(tmp_path):
    """Mean ± sample sd over groups and ALTER's paired wins, from <group>/<run>.json files."""
    ref = {"forget_quality": 0.01, "model_utility": 0.5}
    for g, (a, b) in {"s0": ((0.5, 0.6), (0.1, 0.7)), "s1": ((0.3, 0.4), (0.4, 0.2))}.items():
        os.makedirs(tmp_path / g)
        for name, (fq, mu) in (("alter", a), ("npo", b)):
            m = {"unlearned": {"forget_quality": fq, "model_utility": mu}, "target": ref, "retain": ref}
            json.dump(m, open(tmp_path / g / f"{name}.json", "w"))
    text = table.table(str(tmp_path))
    alter = next(line for line in text.splitlines() if line.startswith("| alter |"))
    npo = next(line for line in text.splitlines() if line.startswith("| npo |"))
    assert "0.4 ± 0.14" in alter and "0.5 ± 0.14" in alter, alter   # FQ (0.5, 0.3), MU (0.6, 0.4)
    assert npo.endswith("| 1/0/1; 1/0/1 |"), npo  # FQ 0.5 > 0.1, 0.3 < 0.4; MU 0.6 < 0.7, 0.4 > 0.2
    assert table.versus([0.9, 0.5, 0.1, None], [0.9, 0.4, 0.2, 0.3]) == "1/1/1"  # above/equal/below; None skipped
    lines = table.table(str(tmp_path), per_group=True).splitlines()
    assert [line.split(" |")[0] for line in lines if "npo" in line] == ["| s0: npo", "| s1: npo", "| **npo**"]
    assert next(line for line in lines if line.startswith("| s1: npo")).split(" | ")[2:4] == ["0.4", "0.2"]
    assert table.ms([1.0])[1] == 0.0 and table.ms([1.0, 3.0]) == pytest.approx((2.0, 2 ** 0.5))
    assert table.ms([0.7401451021720236] * 3)[1] == 0.0  # equal values: 0, not numpy's rounding residue


def test_finished_runs_are_reused_only_with_the_same_flags(tmp_path):
    """runs.train skips a finished run only when its config.json holds the flags asked for."""
    import runs
    cfg = {"method": "alter", "lr_b": 0.001, "epochs": 10, "no_phase1": None, "lam": 0.0, "seed": 3}
    json.dump(cfg, open(tmp_path / "config.json", "w"))
    assert runs.same_flags(str(tmp_path), ["--method", "alter", "--lr-b", "0.001", "--epochs", "10", "--lam", "0",
                                           "--seed", "3"])
    assert runs.same_flags(str(tmp_path), ["--lr-b", "1e-3"])  # the same number, written otherwise
    assert not runs.same_flags(str(tmp_path), ["--lr-b", "0.003"])
    assert not runs.same_flags(str(tmp_path), ["--no-phase1"])
    assert not runs.same_flags(str(tmp_path), ["--method", "npo"])


def test_committed_records_are_reused_only_with_the_same_flags(tmp_path, monkeypatch):
    """runs.train reads a run's committed record (results/) when it holds the same flags, so an experiment goes on
    in a new sitting without out/; other flags start train.py."""
    import runs
    calls = []
    monkeypatch.setattr(runs.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or (_ for _ in ()).throw(
        RuntimeError("would train")))
    record = tmp_path / "alter.json"
    json.dump({"flags": ["--lr-b", "0.001", "--seed", "3"], "unlearned": {"forget_quality": 0.5}}, open(record, "w"))
    m = runs.train(str(tmp_path / "out" / "alter"), ["--lr-b", "0.001"], 3, record=str(record))
    assert m["unlearned"]["forget_quality"] == 0.5 and not calls
    with pytest.raises(RuntimeError, match="would train"):
        runs.train(str(tmp_path / "out" / "alter"), ["--lr-b", "0.003"], 3, record=str(record))
    assert "--lr-b" in calls[0] and "0.003" in calls[0]
