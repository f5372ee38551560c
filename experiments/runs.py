"""What the toy experiments share: run train.py (or evaluate.py) once per folder, resumably, and read the
metrics back. A run that finished (metrics.json) with the same flags is skipped, so an interrupted experiment goes on
where it stopped; one that ran with other flags (say, a new selection) runs again."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")))  # the project

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
TOY = ["--forget", "toy_forget10", "--model", "tiny"]


def same_flags(out, flags):
    """Whether the finished run in `out` ran with `flags` (each --flag value, or --switch, against its config.json)."""
    cfg = json.load(open(os.path.join(out, "config.json")))
    for i, f in enumerate(flags):
        if not f.startswith("--"):
            continue
        key, given = f[2:].replace("-", "_"), flags[i + 1] if i + 1 < len(flags) and not flags[i + 1].startswith("--") \
            else True
        have = cfg.get(key)
        if given is True and have is not True or given is not True and str(have) != given and \
                (not isinstance(have, (int, float)) or float(given) != have):
            return False
    return True


def train(out, flags, seed, threads=0):
    """python train.py on the toy benchmark into `out` (skipped when it has finished with the same flags); its
    metrics."""
    if not os.path.exists(os.path.join(out, "metrics.json")) or not same_flags(out, flags + ["--seed", str(seed)]):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cmd = [sys.executable, "train.py", *TOY, "--seed", str(seed), "--threads", str(threads), "--out", out,
               "--overwrite", "--log-every", "1", *flags]
        print("==", " ".join(cmd[1:]), flush=True)
        with open(out + ".log", "w") as log:
            subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.load(open(os.path.join(out, "metrics.json")))


def gate(run, gate_name, threads=0):
    """The adapter of a finished ALTER run evaluated again under another gate (evaluate.py --gate); the
    run's metrics with the unlearned row replaced."""
    out = os.path.join(run, gate_name)
    if not os.path.exists(os.path.join(out, "metrics.json")):
        cmd = [sys.executable, "evaluate.py", "--adapter", run, "--gate", gate_name, "--threads", str(threads),
               "--out", out]
        with open(out + ".log", "w") as log:
            subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    m = json.load(open(os.path.join(run, "metrics.json")))
    return {**m, "unlearned": json.load(open(os.path.join(out, "metrics.json")))}
