"""Shared test helpers."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` (the README's test command) runs two workers on CI's two cores: one thread each, and one for the
    # processes their tests start (OMP_NUM_THREADS is inherited)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and stay fast on a busy machine (restored after each test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def in_triton_interpreter(code: str) -> None:
    """Run `code` in a fresh Python process under Triton's CPU interpreter (TRITON_INTERPRET must be set before
    triton is first imported), from the tests folder, after `triton_interpreter`'s fix for numpy >= 2; it must print
    "ok" last."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", "import triton_interpreter\n" + code], cwd=Path(__file__).parent,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def left_padded(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of prompts of different lengths, padded with 0 on the left."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    return ids, mask


_HIDE_HYPENET = """
import importlib.util, os, sys
# Drop every way this environment has of finding hypenet: path entries holding it and editable-install finders.
sys.path[:] = [p for p in sys.path if p and not os.path.isdir(os.path.join(p, "hypenet"))]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
sys.path_importer_cache.clear()
assert importlib.util.find_spec("hypenet") is None, "hypenet is importable in the subprocess"
"""


def run_without_hypenet(script: str, cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a Python script where only torch and transformers (not hypenet) can be imported, as a user would (stdin
    closed: a question the script asks goes unanswered). PYTHONPATH stays, less its entries that hold hypenet
    (`_HIDE_HYPENET`): packages installed into a folder on it (the GPU machine's carried transformers) stay in use."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(Path(cwd) / "hf_modules"))
    return subprocess.run([sys.executable, "-c", _HIDE_HYPENET + script], cwd=cwd, env=env, capture_output=True,
                          stdin=subprocess.DEVNULL, text=True, timeout=timeout)


def load_script(name: str):
    """scripts/NAME.py as a module (the scripts are not a package), for tests of its functions."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent.parent / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
