"""What the toy experiments share: run train.py (or evaluate.py) once per folder, resumably, and read the
metrics back. A run whose committed record (results/...json) or run folder (out/, metrics.json) holds the same flags
is skipped, so an interrupted experiment goes on where it stopped, in another sitting too; one that ran with other
flags (say, after a new selection) runs again."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")))  # the project
from metrics import write_json  # noqa: E402

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


def recorded(record, flags):
    """The committed record (results/...json) of a run with these flags, or None."""
    m = json.load(open(record)) if record and os.path.exists(record) else {}
    return m if m.get("flags") == flags else None


def train(out, flags, seed, threads=0, record=None):
    """python train.py on the toy benchmark into `out`; its metrics, with the flags it ran with. Skipped when
    `record` (the committed copy under results/, which outlives out/) holds the same flags, or when `out` has
    finished with them; the metrics are then copied to `record`."""
    flags = flags + ["--seed", str(seed)]
    if m := recorded(record, flags):
        return m
    if not os.path.exists(os.path.join(out, "metrics.json")) or not same_flags(out, flags):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cmd = [sys.executable, "train.py", *TOY, "--threads", str(threads), "--out", out, "--overwrite",
               "--log-every", "1", *flags]
        print("==", " ".join(cmd[1:]), flush=True)
        with open(out + ".log", "w") as log:
            subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    m = {**json.load(open(os.path.join(out, "metrics.json"))), "flags": flags}
    if record:
        os.makedirs(os.path.dirname(record), exist_ok=True)
        write_json(record, m)
    return m


def gate(run, gate_name, flags, threads=0, record=None):
    """The adapter of a finished ALTER run (trained with `flags`) evaluated again under another gate
    (evaluate.py --gate): the run's metrics with the unlearned row replaced. Skipped as train() is."""
    flags = flags + ["--gate", gate_name]
    if m := recorded(record, flags):
        return m
    out = os.path.join(run, gate_name)
    if not os.path.exists(os.path.join(out, "metrics.json")):
        cmd = [sys.executable, "evaluate.py", "--adapter", run, "--gate", gate_name, "--threads", str(threads),
               "--out", out]
        with open(out + ".log", "w") as log:
            subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    m = json.load(open(os.path.join(run, "metrics.json")))
    m = {**m, "unlearned": json.load(open(os.path.join(out, "metrics.json"))), "flags": flags}
    if record:
        write_json(record, m)
    return m
