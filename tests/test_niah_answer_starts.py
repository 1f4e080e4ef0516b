"""scripts/niah_answer_starts.py: how NIAH answers begin, counted from `hypenet eval`'s niah_samples.jsonl."""

import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("niah_answer_starts",
                                              Path(__file__).parent.parent / "scripts" / "niah_answer_starts.py")
starts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(starts)

ROWS = [
    {"task": "single_2", "context_len": 4096, "output": "\nthe number of the whale's tail-fin", "correct": False},
    {"task": "single_2", "context_len": 4096, "output": " \nthe number 6377450.", "correct": True},
    {"task": "single_2", "context_len": 8192, "output": " 7392396.", "correct": True},
    {"task": "single_1", "context_len": 4096, "output": " 1234.", "correct": False},
]


def test_counts_line_break_starts_per_task():
    assert starts.starts_with_line_break(" \t\nx") and not starts.starts_with_line_break(" x\n")
    assert starts.answer_starts(ROWS) == {
        "single_1": {"answers": 1, "right": 0, "line_break": 0, "right_without_line_break": 0},
        "single_2": {"answers": 3, "right": 2, "line_break": 2, "right_without_line_break": 1},
    }


def test_table_labels_runs_and_filters_lengths(tmp_path, capsys):
    path = tmp_path / "lease" / "eval" / "student" / "niah_samples.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    starts.main([str(path), "--lengths", "4096", "--out", str(tmp_path / "t.md")])
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "t.md").read_text()
    assert printed.splitlines()[2:] == ["| lease/student | single_1 | 1 | 0% | 0% | 0 / 1 |",
                                        "| lease/student | single_2 | 2 | 50% | 100% | 0 / 0 |"]
    with pytest.raises(SystemExit):
        starts.main([str(path), "--lengths", "4K"])
    assert "--lengths takes token counts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        starts.main([str(tmp_path / "missing.jsonl")])
    assert "no such file" in capsys.readouterr().err
