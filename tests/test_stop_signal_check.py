"""scripts/stop_signal_check.py: its modes are checked before any child starts."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "scripts" / "stop_signal_check.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_an_unknown_mode_is_refused_with_the_modes_there_are(tmp_path):
    done = run("--modes", "as_one,bogus", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "--modes: unknown bogus; choose of as_one, as_again, triton, triton_unwatched" in done.stderr
    assert not any(tmp_path.iterdir())  # nothing run, nothing written


@pytest.mark.skipif(importlib.util.find_spec("triton") is not None, reason="triton is installed here")
def test_the_triton_modes_without_triton_say_what_to_install(tmp_path):
    done = run("--modes", "triton_unwatched", "--out", str(tmp_path))
    assert done.returncode == 1
    assert "the triton modes need the `triton` package (pip install triton)" in done.stderr
