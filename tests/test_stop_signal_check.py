"""scripts/stop_signal_check.py: its modes are checked before any child starts."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script

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


def trial(mode, last_step, kept, twins=0, replaced=False):
    return {"mode": mode, "last_step": last_step, "kept": kept, "twins_ignored": twins, "handler_replaced": replaced}


def test_a_signal_before_the_first_step_ended_is_counted_apart_from_the_stops_that_could_keep_a_checkpoint():
    check = load_script("stop_signal_check")
    results = [trial("as_one", 0, False), trial("as_one", 193, True, twins=1), trial("as_one", 22, False),
               trial("triton_unwatched", 0, False), trial("triton_unwatched", 759, False, replaced=True),
               trial("triton_unwatched", 12, True, replaced=True)]
    summary = check.summarise(results, ["as_one", "triton_unwatched"])
    assert summary == {
        "as_one": {"stops": 3, "before_a_step": 1, "after_a_step": 2, "kept": 1, "twins_ignored": 1,
                   "handler_replaced": 0},
        "triton_unwatched": {"stops": 3, "before_a_step": 1, "after_a_step": 2, "kept": 1, "twins_ignored": 0,
                             "handler_replaced": 2},
    }
    lines = check.table(summary)
    assert lines[2] == "| as one stop (the engine now) | 3 | 1 | 2 | 1 | 1 | 0 |"
    assert lines[3] == "| as one, a Triton kernel compiled after step 1, no watch | 3 | 1 | 2 | 1 | 0 | 2 |"
    assert len({line.count("|") for line in lines}) == 1  # header, rule and rows have the same columns
