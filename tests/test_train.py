"""train.py end to end on reduced settings: resume equals an uninterrupted run, same seed gives the same
metrics, the hub-layout path with a checkpoint directory and real TOFU files, torchrun (DDP, gloo), and
clear errors on bad input.

Run: python -m pytest -q tests/test_train.py
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import ROOT

# a few people, short fine-tuning: the pipeline, not the numbers
QUICK = ["--forget", "toy_forget10", "--model", "tiny", "--limit", "12", "--ft-epochs", "2", "--epochs", "2",
         "--phase1-epochs", "1", "--eval-batch-size", "16", "--log-every", "100", "--eval-limit", "6"]


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
    a, b, c, d = (str(tmp_path / n) for n in "abcd")
    run(QUICK + ["--out", a], cache)
    r = run(QUICK + ["--out", b], cache)
    assert metrics(a) == metrics(b), "two runs with the same seed differ"
    assert "fine-tuning" not in r.stdout  # the second run reads target and retain models from the cache
    # any setting that changes a cached model makes a new one: here the fine-tuning batch size
    r = run(QUICK + ["--out", d, "--ft-batch-size", "8", "--stop-after", "0", "--eval-limit", "1"], cache)
    assert "fine-tuning the target model" in r.stdout and "fine-tuning the retain model" in r.stdout
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
    """Real TOFU from a local mirror, a checkpoint directory, and open-unlearning's retain logs (TOFU_EVAL.json,
    all 40 forget01 items) as the reference for the first 4 items evaluated (--limit 4)."""
    from model import GPT, GPTConfig, TINY
    GPT(GPTConfig(**{**TINY, "n_layer": 1, "n_embd": 32, "n_head": 2})).save_pretrained(tmp_path / "ckpt")
    logs = {"forget_truth_ratio": {"value_by_index": {str(i): {"score": 0.5 + i / 80} for i in range(40)}},
            "mia_min_k": {"agg_value": 0.4}}
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(logs))
    out = str(tmp_path / "run")
    r = run(["--forget", "tofu_forget01", "--model", str(tmp_path / "ckpt"), "--data-dir", str(shared_data),
             "--limit", "4", "--ft-epochs", "1", "--epochs", "1", "--eval-batch-size", "8", "--out", out,
             "--retain-logs", str(tmp_path / "TOFU_EVAL.json")], cache)
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert set(m) == {"unlearned", "target"}
    assert 0 <= m["unlearned"]["model_utility"] <= 1 and m["unlearned"]["forget_quality"] is not None
    assert "fine-tuning the target model on tofu_full" in r.stdout and "fine-tuning the retain" not in r.stdout
    # forget quality against the logs' first 4 truth ratios, PrivLeak against their Min-K% AUC
    from metrics import forget_quality, privleak
    u = m["unlearned"]
    ref = [0.5 + i / 80 for i in range(4)]
    assert u["forget_quality"] == pytest.approx(forget_quality(u["forget_truth_ratio_by_item"], ref))
    assert u["privleak"] == pytest.approx(privleak(u["privleak_auc"], 0.4))
    r = run(["--forget", "tofu_forget01", "--model", str(tmp_path / "ckpt"), "--data-dir", str(shared_data),
             "--limit", "4", "--out", out + "2", "--retain-logs", str(tmp_path / "TOFU_EVAL.json"), "--eval-mask",
             "padding"], cache, check=False)
    assert r.returncode == 2 and "computed with the 'ou' attention mask" in r.stderr


def test_torchrun_two_processes(tmp_path, cache):
    out = str(tmp_path / "ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # 24 forget examples in batches of 23: the last batch holds one, so one process gets none
    args = QUICK + ["--batch-size", "23"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "train.py", *args,
                        "--out", out, "--cache", str(cache)], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert ", 2 processes" in r.stdout
    single = str(tmp_path / "single")
    run(args + ["--out", single], cache)
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
    from methods import METHODS
    assert r.returncode == 2 and f"unknown method 'sgd'; valid: {', '.join(METHODS)}" in r.stderr
    r = run(QUICK + ["--out", out, "--resume"], cache, check=False)
    assert r.returncode == 2 and "--resume: no checkpoint in" in r.stderr
    r = run(QUICK + ["--out", out, "--forget-pair", "3"], cache, check=False)
    assert r.returncode == 2 and "--forget-pair is for --forget tofu_forget01 with --authors" in r.stderr
    r = run(QUICK + ["--out", out, "--forget", "toy_text", "--gate", "oracle"], cache, check=False)
    assert r.returncode == 2 and "--gate oracle needs forget questions" in r.stderr
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


# ALTER on a few people, long enough that the target knows the forget people and ALTER visibly forgets them
DIRECTION = ["--forget", "toy_forget10", "--model", "tiny", "--limit", "12", "--eval-limit", "8", "--ft-epochs", "30",
             "--epochs", "8", "--lr-b", "1.5e-3", "--log-every", "1000"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, cache):
    out = str(tmp_path_factory.mktemp("direction") / "run")
    run(DIRECTION + ["--out", out], cache)
    return out


def test_alter_forgets_the_forget_people_and_keeps_the_rest(toy_run):
    """The direction of unlearning: the target knows the forget people (which --limit keeps whole), ALTER
    takes their answers away and keeps the retain answers; this fails when the unlearning step does nothing."""
    m = json.load(open(os.path.join(toy_run, "metrics.json")))
    t, r, u = m["target"], m["retain"], m["unlearned"]
    assert t["forget_Q_A_Prob"] > 10 * r["forget_Q_A_Prob"] and t["forget_Q_A_ROUGE"] > 0.6, (t, r)
    assert u["forget_Q_A_Prob"] < 0.5 * t["forget_Q_A_Prob"], (t["forget_Q_A_Prob"], u["forget_Q_A_Prob"])
    assert u["forget_Q_A_ROUGE"] < 0.5 * t["forget_Q_A_ROUGE"], (t["forget_Q_A_ROUGE"], u["forget_Q_A_ROUGE"])
    assert u["retain_Q_A_ROUGE"] >= t["retain_Q_A_ROUGE"] - 0.15, (t["retain_Q_A_ROUGE"], u["retain_Q_A_ROUGE"])
    # PrivLeak and forget quality are relative to the retain model (open-unlearning): 0 and 1 for itself
    assert r["privleak"] == 0.0 and r["forget_quality"] == 1.0 and t["privleak"] < 0


def test_evaluate_reproduces_the_run(toy_run):
    """evaluate.py on the run's adapter, with no flag but --adapter, gives the numbers train.py wrote: the gate,
    q, theta (here the absolute 1.2 or a quantile fallback), seed, mask rule, base model, benches and items all
    come from the adapter's header, and the retain reference from the run's metrics.json."""
    r = subprocess.run([sys.executable, "evaluate.py", "--adapter", toy_run], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    want = json.load(open(os.path.join(toy_run, "metrics.json")))["unlearned"]
    got = json.load(open(os.path.join(toy_run, "eval", "metrics.json")))
    keys = [k for k, v in want.items() if isinstance(v, float) and not k.endswith("seconds")]
    assert len(keys) > 20 and "forget_quality" in keys and "privleak" in keys
    for k in keys:
        assert abs(got[k] - want[k]) <= 1e-6, (k, got[k], want[k])
    assert got["routing"] == want["routing"]  # the routing diagnostics too


def test_routing_diagnostics_and_the_oracle_gate(toy_run, tmp_path):
    """metrics.json of an ALTER run says how its gate routed every evaluated set; evaluate.py --gate oracle runs
    the same adapter with each forget question's low-entropy tokens on its own sub-domain's expert (the
    adapter's header holds the sub-domains) and every other row on B_r."""
    m = json.load(open(os.path.join(toy_run, "metrics.json")))["unlearned"]["routing"]
    assert set(m) == {"forget", "forget_paraphrased", "forget_perturbed", "retain", "real_authors", "world_facts"}
    for name, r in m.items():
        assert r["tokens"] > 0 and 0 <= r["high"] <= 1 and abs(sum(r["usage"]) - 1) < 1e-3, (name, r)
        assert ("sub_domain_acc" in r) == name.startswith("forget"), (name, r)
    r = subprocess.run([sys.executable, "evaluate.py", "--adapter", toy_run, "--gate", "oracle", "--out",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "--gate 'oracle' overrides the adapter's gate 'entropy'" in r.stdout and "routing: gate oracle" in r.stdout
    o = json.load(open(tmp_path / "metrics.json"))["routing"]
    for name in ("forget", "forget_paraphrased", "forget_perturbed"):
        assert o[name]["low_to_forget"] == 1.0 and o[name]["sub_domain_acc_low"] == 1.0, o[name]
        assert o[name]["high_to_forget"] in (0.0, None), o[name]
    for name in ("retain", "real_authors", "world_facts"):
        assert o[name]["usage"][0] == 1.0, o[name]


def test_bad_numbers_are_refused_before_any_work(capsys):
    import plan
    import train
    from methods import method_flags
    ALL_FLAGS = train.FLAGS + tuple(method_flags().values())
    cases = [("--epochs", "-1", "--epochs must be at least 1"), ("--rank", "0", "--rank must be at least 1"),
             ("--lr-b", "0", "--lr-b must be greater than 0"), ("--lr", "-1e-5", "--lr must be greater than 0"),
             ("--q", "0", "--q must be greater than 0"), ("--limit", "0", "--limit must be at least 1"),
             ("--eval-limit", "0", "--eval-limit must be at least 1"), ("--batch-size", "0", "--batch-size must be"),
             ("--n-experts", "0", "--n-experts must be at least 1"), ("--ft-epochs", "-2", "--ft-epochs must be at "
                                                                                         "least 0"),
             ("--theta-quantile", "1.5", "--theta-quantile must be between 0 and 1"), ("--lam", "-1", "--lam must be"),
             ("--tau-low", "0", "--tau-low must be greater than 0"), ("--block-size", "1", "--block-size must be at "
                                                                                          "least 2")]
    for flag, value, message in cases:
        with pytest.raises(SystemExit) as e:
            plan.check_args(train.parser.parse_args([f"{flag}={value}"]), ALL_FLAGS)
        assert e.value.code == 2 and message in capsys.readouterr().err, flag
    plan.check_args(train.parser.parse_args([]), ALL_FLAGS)  # the defaults pass


def test_malformed_split_fails_before_fine_tuning(tmp_path, cache, shared_data):
    """A local mirror whose forget01.json has one broken line: the run stops at once, naming the file and the
    line, before any model is fine-tuned (it would otherwise train the target on all 4,000 questions first)."""
    from model import GPT, GPTConfig, TINY
    GPT(GPTConfig(**{**TINY, "n_layer": 1, "n_embd": 32, "n_head": 2})).save_pretrained(tmp_path / "ckpt")
    (tmp_path / "data" / "tofu").mkdir(parents=True)
    for f in (shared_data / "tofu").iterdir():
        os.symlink(f, tmp_path / "data" / "tofu" / f.name)
    lines = (shared_data / "tofu" / "forget01.json").read_text().splitlines()
    lines[6] = lines[6][:-5]  # a truncated record
    (tmp_path / "data" / "tofu" / "forget01.json").unlink()
    (tmp_path / "data" / "tofu" / "forget01.json").write_text("\n".join(lines) + "\n")
    r = run(["--forget", "tofu_forget01", "--model", str(tmp_path / "ckpt"), "--data-dir", str(tmp_path / "data"),
             "--out", str(tmp_path / "run")], cache, check=False)
    assert r.returncode == 2 and "forget01.json, line 7: not valid JSON" in r.stderr, r.stderr[-2000:]
    assert "fine-tuning" not in r.stdout and "Traceback" not in r.stderr


def text_mirror(root, shared):
    """A local mirror for text forgetting: small WMDP-cyber and MUSE-News raw corpora written here, the
    questions, MMLU and MUSE's evaluation sets linked from the shared data folder."""
    words = "the server sends a packet to port eighty and the scanner logs every open service".split()
    doc = lambda k: " ".join(words[(k * 3 + i) % len(words)] for i in range(40)) + "."
    (root / "wmdp").mkdir(parents=True)
    for name, off in (("cyber-forget-corpus", 0), ("cyber-retain-corpus", 50)):
        lines = "".join(json.dumps({"text": doc(off + k)}) + "\n" for k in range(6))
        (root / "wmdp" / f"{name}.jsonl").write_text(lines)
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
    n_forget = int(r.stdout.split("  examples ")[1].split()[0])
    assert n_forget >= 6 * 40 // 16, r.stdout  # six 40-word documents in 16-token windows
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert set(m) == {"unlearned", "target"}
    for row in m.values():
        assert 0 <= row["wmdp_cyber_acc"] <= 1 and 0 <= row["mmlu_acc"] <= 1
    # 2 layers: RMU steers layer round(2 * 7/32) = 0, and trains its MLP down-projection (4d x d) alone
    assert m["unlearned"]["trainable_params"] == 4 * 32 * 32
    assert "trains transformer.h.0.mlp.c_proj.weight\n" in r.stdout
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
    """The shared data folder has the WMDP questions and MUSE-News evaluation sets but no WMDP corpora and no MUSE
    raw retain text: the error names every missing file and where it comes from, before any work."""
    from model import GPT, GPTConfig, TINY
    GPT(GPTConfig(**{**TINY, "n_layer": 1, "n_embd": 32, "n_head": 2})).save_pretrained(tmp_path / "ckpt")
    base = ["--model", str(tmp_path / "ckpt"), "--data-dir", str(shared_data), "--out", str(tmp_path / "x")]
    r = run(base + ["--forget", "wmdp_cyber"], cache, check=False)
    assert r.returncode == 2, r.stderr
    assert "wmdp/cyber-forget-corpus.jsonl is missing" in r.stderr
    assert "wmdp/cyber-retain-corpus.jsonl is missing" in r.stderr
    assert "cais/wmdp-corpora (config cyber-forget-corpus" in r.stderr
    assert "python evaluate.py --model MODEL --bench wmdp_cyber,mmlu" in r.stderr
    r = run(base + ["--forget", "wmdp_bio"], cache, check=False)
    assert r.returncode == 2 and "cais/wmdp-bio-forget-corpus is gated" in r.stderr
    r = run(base + ["--forget", "muse_news"], cache, check=False)
    assert r.returncode == 2 and "muse/news/raw/retain1.json is missing" in r.stderr
    assert "raw/forget.json" not in r.stderr  # present in the mirror: not listed
    assert not os.path.exists(tmp_path / "x")


def hub_cache(home, repo, model, tokenizer_dir):
    """A checkpoint laid out as huggingface_hub caches a download of `repo` (HF_HOME/hub)."""
    root = home / "hub" / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    model.save_pretrained(root / "snapshots" / commit)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (root / "snapshots" / commit / f).write_bytes((tokenizer_dir / f).read_bytes())
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)


def test_bare_tofu_command_uses_the_standard_models_from_the_hub_cache(tmp_path, shared_data):
    """`--forget tofu_forget10` with no model flags: open-unlearning's target and retain90 ids are resolved
    through the HF cache (tiny random Llama-layout checkpoints with a small byte-level BPE under those ids,
    HF_HUB_OFFLINE=1); both phases and the evaluation run end to end, and nothing is fine-tuned."""
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, trainers
    from model import GPT, GPTConfig
    texts = [json.loads(line)["answer"] for line in open(shared_data / "tofu" / "full.json", encoding="utf-8")]
    bpe = HFTokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts[:500], trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    for i, name in enumerate(("full", "retain90")):
        torch.manual_seed(i)
        cfg = GPTConfig(arch="llama", vocab_size=bpe.get_vocab_size(), n_layer=2, n_head=2, n_kv_head=1, n_embd=32,
                        intermediate_size=64, block_size=1024, eos_token_id=0)
        hub_cache(tmp_path / "hf", f"open-unlearning/tofu_Llama-3.2-1B-Instruct_{name}", GPT(cfg), tmp_path)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    r = run(["--forget", "tofu_forget10", "--data-dir", str(shared_data), "--limit", "8", "--eval-limit", "4",
             "--epochs", "1", "--batch-size", "50", "--log-every", "4", "--out", str(out)], tmp_path / "c", env=env)
    cfg = json.load(open(out / "config.json"))
    assert cfg["model"] is None and cfg["target"] == "open-unlearning/tofu_Llama-3.2-1B-Instruct_full"
    assert cfg["retain_model"] == "open-unlearning/tofu_Llama-3.2-1B-Instruct_retain90"
    assert "target   open-unlearning/tofu_Llama-3.2-1B-Instruct_full (HF hub" in r.stdout
    assert "  measured one training step of 100 examples" in r.stdout and "  estimate unlearning " in r.stdout
    assert "phase 1 epoch 1 step 0000" in r.stdout and "phase 2 epoch 2 step 0008" in r.stdout  # both phases
    m = json.load(open(out / "metrics.json"))
    assert set(m) == {"unlearned", "target", "retain"} and m["retain"]["forget_quality"] == 1.0
    assert not any(f.startswith("tofu-") for f in os.listdir(tmp_path / "c"))  # nothing was fine-tuned


def test_gpu_check_script_runs_end_to_end_on_cpu(tmp_path):
    """experiments/gpu_check.sh --device cpu: the toy default in bf16 and bench.py on a tiny random shape, every
    row printed and written to the log (on a GPU: the real shapes)."""
    r = subprocess.run(["bash", "experiments/gpu_check.sh", "--device", "cpu"], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "OUT_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    log = (tmp_path / "gpu_check_cpu.txt").read_text()
    assert "device   cpu, bfloat16 (autocast)" in log and "phase 1 epoch 1 step 0000" in log
    assert "forget_quality" in log and "metrics.json written" in log
    for row in ("forward tiny (random weights)", "greedy generation", "unlearning step lora", "unlearning step alter",
                "unlearning step asymlora", "unlearning step gd"):
        assert row in log, row
    assert log.count(", fwd ") == 5 and ", base " in log  # each step's forward alone, GatedLM's base pass alone
    assert " failed " not in log and "5 processes, taking turns, 2 steps each" in log
    assert "total" in log.splitlines()[-1]


def test_bare_tofu_command_offline_prints_the_plan_then_one_message(tmp_path):
    """No hub and nothing cached: the plan, then one message naming the standard models and the flags that
    work offline; exit code 2, no traceback."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    r = run(["--forget", "tofu_forget10", "--out", str(tmp_path / "run")], tmp_path / "c", check=False, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stdout.startswith("plan: forget tofu_forget10 with alter") and "  device   " in r.stdout
    for s in ("open-unlearning/tofu_Llama-3.2-1B-Instruct_full (target)",
              "open-unlearning/tofu_Llama-3.2-1B-Instruct_retain90 (retain)",
              "--data-dir DIR", "--target DIR", "--retain-model DIR", "--model DIR"):
        assert s in r.stderr, s
    assert r.stderr.count("error:") == 1


def test_relearning_attack(toy_run, monkeypatch):
    """experiments/relearn.py: metrics.json names the run's target and retain checkpoints; the attack trains every
    parameter of the deployed model (base weights, adapters, routers) on a seeded half of each person's forget
    questions and never sees the other half; its scores before the attack are the run's own per-item numbers
    (items.jsonl); with steps the relearned half's answers become more likely."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("relearn", os.path.join(ROOT, "experiments", "relearn.py"))
    relearn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(relearn)
    m = json.load(open(os.path.join(toy_run, "metrics.json")))
    assert os.path.isdir(m["target"]["checkpoint"]) and os.path.isdir(m["retain"]["checkpoint"])
    lm, tok = relearn.load(toy_run, "unlearned")
    adapter = next(mod for mod in lm.modules() if hasattr(mod, "lora_B"))
    router = next(p for n, p in lm.named_parameters() if ".router." in n)
    watched = {"base": adapter.base.weight, "B": adapter.lora_B, "router": router}
    before = {k: p.detach().clone() for k, p in watched.items()}
    rows = [{"question": "Who is Ada?", "answer": "A painter from Oslo."}]
    losses = relearn.attack(lm, tok, rows, 3, 1e-3, "float32")
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    assert all(not torch.equal(p, before[k]) for k, p in watched.items())
    assert not any(p.requires_grad for p in lm.parameters())
    cfg = json.load(open(os.path.join(toy_run, "config.json")))
    real = relearn.forget_eval_rows("toy", "10", None, cfg["seed"])[:2]  # TOFU's MC rule (paraphrased vs perturbed)
    assert 0 < relearn.score(lm, tok, real, cfg, "bfloat16")["prob"] < 1  # and under bf16 autocast
    seen = []
    monkeypatch.setattr(relearn, "attack", lambda lm, tok, rows, *a: seen.extend(r["question"] for r in rows) or [])
    r = relearn.relearn(toy_run, "unlearned", 2)
    forget = [it for it in map(json.loads, open(os.path.join(toy_run, "items.jsonl"))) if it["set"] == "forget"]
    assert sorted(r["relearned"] + r["held_out"]) == list(range(len(forget))) == list(range(8))
    assert seen == [forget[i]["question"] for i in r["relearned"]]  # the attack saw the relearned half alone
    for half in ("relearned", "held_out"):
        for k in ("prob", "rouge"):
            want = np.mean([forget[i][k] for i in r[half]])
            assert abs(r["before"][half][k] - want) < 1e-5, (half, k, r["before"][half][k], want)
    monkeypatch.undo()
    assert relearn.relearn(toy_run, "target", 0)["before"]["held_out"]["prob"] > r["before"]["held_out"]["prob"]
    r = relearn.relearn(toy_run, "unlearned", 5, lr=1e-3)
    assert r["after"]["relearned"]["prob"] > r["before"]["relearned"]["prob"], r
