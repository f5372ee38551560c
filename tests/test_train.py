"""train.py end to end on reduced settings: resume equals an uninterrupted run, same seed gives the same
metrics, the hub-layout path with a checkpoint directory and real TOFU files, torchrun (DDP, gloo), and
clear errors on bad input.

Run: python -m pytest -q tests/test_train.py
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# a few people, short fine-tuning: the pipeline, not the numbers
QUICK = ["--forget", "toy_forget10", "--model", "tiny", "--limit", "12", "--ft-epochs", "2", "--epochs", "2",
         "--phase1-epochs", "1", "--eval-batch-size", "16", "--log-every", "100"]


def run(args, cache, check=True, env=None):
    r = subprocess.run([sys.executable, "train.py", *args, "--cache", str(cache)], cwd=ROOT, capture_output=True,
                       text=True, env=env)
    if check:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def metrics(out):
    m = json.load(open(os.path.join(out, "metrics.json")))
    return {row: {k: v for k, v in vals.items() if not k.endswith("seconds")} for row, vals in m.items()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_resume_equals_uninterrupted_and_same_seed_same_metrics(tmp_path, cache):
    a, b, c = (str(tmp_path / n) for n in "abc")
    run(QUICK + ["--out", a], cache)
    run(QUICK + ["--out", b], cache)
    assert metrics(a) == metrics(b), "two runs with the same seed differ"
    # interrupted after Phase I and the first Phase II epoch, then resumed
    r = run(QUICK + ["--out", c, "--stop-after", "2"], cache)
    assert "stopping after epoch 2" in r.stdout and not os.path.exists(os.path.join(c, "metrics.json"))
    run(QUICK + ["--out", c, "--resume"], cache)
    assert open(os.path.join(a, "adapter.safetensors"), "rb").read() == \
        open(os.path.join(c, "adapter.safetensors"), "rb").read()
    assert metrics(a) == metrics(c)


@pytest.mark.parametrize("method", ["npo", "lora"])
def test_baselines_run(tmp_path, cache, method):
    out = str(tmp_path / method)
    r = run(QUICK + ["--out", out, "--method", method], cache)
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert m["unlearned"]["trainable_params"] > 0 and "forget_quality" in m["unlearned"]
    header = next(line for line in r.stdout.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "target", "retain", method]


def test_hub_layout_checkpoint_and_real_tofu(tmp_path, cache, shared_data):
    from model import GPT, GPTConfig, TINY
    GPT(GPTConfig(**{**TINY, "n_layer": 1, "n_embd": 32, "n_head": 2})).save_pretrained(tmp_path / "ckpt")
    out = str(tmp_path / "run")
    r = run(["--forget", "tofu_forget01", "--model", str(tmp_path / "ckpt"), "--data-dir", str(shared_data),
             "--limit", "4", "--ft-epochs", "1", "--epochs", "1", "--eval-batch-size", "8", "--out", out], cache)
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert set(m) == {"unlearned", "target", "retain"}
    assert 0 <= m["unlearned"]["model_utility"] <= 1 and m["unlearned"]["forget_quality"] is not None
    assert "fine-tuning the target model on tofu_full" in r.stdout


def test_torchrun_two_processes(tmp_path, cache):
    out = str(tmp_path / "ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "train.py", *QUICK,
                        "--out", out, "--cache", str(cache)], cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "2 process(es)" in r.stdout
    single = str(tmp_path / "single")
    run(QUICK + ["--out", single], cache)
    # each process takes half of every batch and gradients are averaged: the same updates up to how the
    # per-process means weigh tokens, so the metrics agree closely but not bit for bit
    a, b = metrics(out)["unlearned"], metrics(single)["unlearned"]
    for k in ("forget_truth_ratio", "forget_Q_A_Prob", "model_utility", "mc_forget_acc"):
        assert abs(a[k] - b[k]) <= 0.05 + 0.05 * abs(b[k]), (k, a[k], b[k])


def test_bad_input(tmp_path, cache):
    out = str(tmp_path / "bad")
    r = run(QUICK + ["--out", out, "--forget", "toy_forget11"], cache, check=False)
    assert r.returncode == 2 and "'toy_forget11' is not a forget set; valid: toy_forget01," in r.stderr
    r = run(QUICK + ["--out", out, "--forget", "toy_bio"], cache, check=False)
    assert r.returncode == 2 and "'toy_bio' is a split but not a forget set; valid:" in r.stderr
    r = run(QUICK + ["--out", out, "--method", "sgd"], cache, check=False)
    assert r.returncode == 2 and "unknown method 'sgd'; valid: alter, asymlora, lora, npo, gd, ga" in r.stderr
    r = run(QUICK + ["--out", out, "--resume"], cache, check=False)
    assert r.returncode == 2 and "--resume: no checkpoint in" in r.stderr
    # a loss that blows up: stop with the step and the loss parts, keep the last good checkpoint
    run(QUICK + ["--out", out, "--stop-after", "1"], cache)
    before = open(os.path.join(out, "checkpoint.pt"), "rb").read()
    r = run(QUICK + ["--out", out, "--resume", "--lr-b", "1e30", "--overwrite"], cache, check=False)
    assert r.returncode == 2 and "loss is nan" in r.stderr and "ihl" in r.stderr, r.stderr[-2000:]
    assert open(os.path.join(out, "checkpoint.pt"), "rb").read() == before
    assert not os.path.exists(os.path.join(out, "metrics.json"))
    # a run folder holding another config is not overwritten
    r = run(QUICK + ["--out", out, "--rank", "4"], cache, check=False)
    assert r.returncode == 2 and "holds a run with another config" in r.stderr and "'rank': (8, 4)" in r.stderr


def text_mirror(root, shared):
    """A local mirror for text forgetting: small WMDP-cyber and MUSE-News raw corpora written here, the
    questions, MMLU and MUSE's evaluation sets linked from ../shared/data."""
    words = "the server sends a packet to port eighty and the scanner logs every open service".split()
    doc = lambda k: " ".join(words[(k * 3 + i) % len(words)] for i in range(40)) + "."
    (root / "wmdp").mkdir(parents=True)
    for name, off in (("cyber-forget-corpus", 0), ("cyber-retain-corpus", 50)):
        (root / "wmdp" / f"{name}.jsonl").write_text("".join(json.dumps({"text": doc(off + k)}) + "\n" for k in range(6)))
    os.symlink(shared / "wmdp" / "cyber-questions.json", root / "wmdp" / "cyber-questions.json")
    os.symlink(shared / "mmlu", root / "mmlu")
    (root / "muse" / "news" / "raw").mkdir(parents=True)
    for split, off in (("forget", 100), ("retain1", 200)):
        (root / "muse" / "news" / "raw" / f"{split}.json").write_text(json.dumps([doc(off + k) for k in range(6)]))
    for part in ("knowmem", "verbmem", "privleak"):
        os.symlink(shared / "muse" / "news" / part, root / "muse" / "news" / part)
    return root


def test_text_forgetting_wmdp_and_muse(tmp_path, cache, shared_data):
    """--forget wmdp_cyber and muse_news through the whole pipeline: a checkpoint directory, corpora from a
    local mirror, chunking into windows, the right target/retain models and the right evaluation."""
    from model import GPT, GPTConfig, TINY
    GPT(GPTConfig(**{**TINY, "n_layer": 2, "n_embd": 32, "n_head": 2})).save_pretrained(tmp_path / "ckpt")
    data = text_mirror(tmp_path / "data", shared_data)
    common = ["--model", str(tmp_path / "ckpt"), "--data-dir", str(data), "--eval-limit", "4", "--per-subject", "1",
              "--block-size", "16", "--epochs", "1", "--ft-epochs", "1", "--eval-batch-size", "8"]
    out = str(tmp_path / "wmdp")
    r = run(common + ["--forget", "wmdp_cyber", "--method", "rmu", "--out", out], cache)
    assert "fine-tuning" not in r.stdout  # WMDP: the target is the base model itself, no retain model
    n_forget = int(r.stdout.split("unlearning data: ")[1].split()[0])
    assert n_forget >= 6 * 40 // 16, r.stdout  # six 40-word documents in 16-token windows
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert set(m) == {"unlearned", "target"}
    for row in m.values():
        assert 0 <= row["wmdp_cyber_acc"] <= 1 and 0 <= row["mmlu_acc"] <= 1
    # 2 layers: RMU steers layer round(2 * 7/32) = 0, and trains its MLP down-projection (4d x d) alone
    assert m["unlearned"]["trainable_params"] == 4 * 32 * 32 and "trains transformer.h.0.mlp.c_proj.weight\n" in r.stdout
    out = str(tmp_path / "muse")
    r = run(common + ["--forget", "muse_news", "--method", "alter", "--out", out], cache)
    assert "fine-tuning the target model on muse_news_full" in r.stdout
    assert "fine-tuning the retain model on muse_news_retain" in r.stdout
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert set(m) == {"unlearned", "target", "retain"}
    assert m["retain"]["muse_privleak"] == 0.0  # PrivLeak is relative to the retain model's AUC
    for k in ("forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "muse_privleak"):
        assert k in m["unlearned"], k


def test_missing_text_corpora_are_named(tmp_path, cache, shared_data):
    """../shared/data has the WMDP questions and MUSE-News evaluation sets but no WMDP corpora and no MUSE
    raw retain text: the error names every missing file and where it comes from, before any work."""
    from model import GPT, GPTConfig, TINY
    GPT(GPTConfig(**{**TINY, "n_layer": 1, "n_embd": 32, "n_head": 2})).save_pretrained(tmp_path / "ckpt")
    base = ["--model", str(tmp_path / "ckpt"), "--data-dir", str(shared_data), "--out", str(tmp_path / "x")]
    r = run(base + ["--forget", "wmdp_cyber"], cache, check=False)
    assert r.returncode == 2, r.stderr
    assert "wmdp/cyber-forget-corpus.jsonl is missing" in r.stderr and "wmdp/cyber-retain-corpus.jsonl is missing" in r.stderr
    assert "cais/wmdp-corpora (config cyber-forget-corpus" in r.stderr
    assert "python evaluate.py --model MODEL --bench wmdp_cyber,mmlu" in r.stderr
    r = run(base + ["--forget", "wmdp_bio"], cache, check=False)
    assert r.returncode == 2 and "cais/wmdp-bio-forget-corpus is gated" in r.stderr
    r = run(base + ["--forget", "muse_news"], cache, check=False)
    assert r.returncode == 2 and "muse/news/raw/retain1.json is missing" in r.stderr
    assert "raw/forget.json" not in r.stderr  # present in the mirror: not listed
    assert not os.path.exists(tmp_path / "x")
