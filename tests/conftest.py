"""Shared fixtures: a folder of real data and tools ($ALTER_SHARED, default `shared/` beside the repository, as
on the CI machine: data/ in data/benchmarks.py's layout, tools/smollm2_to_hf.py), and the SmolLM2-135M
checkpoint made from it once and cached under .cache/. Tests that need the folder skip cleanly without it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

# the hub is never reached from the tests: hub code paths are exercised with local directories
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ALTER_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def shared_data():
    d = SHARED / "data"
    if not d.is_dir():
        pytest.skip(f"{d} is absent")
    return d


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct in HF layout, made by the shared folder's tools/smollm2_to_hf.py (about 30 s, once)."""
    out = ROOT / ".cache" / "smollm2"
    if (out / "model.safetensors").exists():
        return out
    tool = SHARED / "tools" / "smollm2_to_hf.py"
    if not tool.exists():
        pytest.skip(f"{tool} is absent")
    tmp = out.with_name("smollm2.partial")
    r = subprocess.run([sys.executable, str(tool), str(tmp)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"could not make SmolLM2 (offline?): {r.stderr.strip().splitlines()[-1:]}")
    tmp.rename(out)
    return out
