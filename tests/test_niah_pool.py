"""scripts/niah_pool.py: NIAH answers of several runs pooled per length, with each run's share and their range."""

import json
import lzma
from pathlib import Path

import pytest
from conftest import load_script

from hypenet.eval.niah import accuracy_interval

niah_pool = load_script("niah_pool")


def write_samples(folder: Path, rows: list[tuple[str, int, bool]]) -> Path:
    folder.mkdir(parents=True)
    (folder / "niah_samples.jsonl").write_text("".join(
        json.dumps({"task": task, "context_len": length, "correct": correct}) + "\n" for task, length, correct in rows))
    return folder


def test_runs_are_pooled_per_length_over_all_tasks(tmp_path):
    a = write_samples(tmp_path / "a", [("single_1", 4096, True), ("single_2", 4096, False),
                                        ("single_1", 8192, True), ("single_2", 8192, True)])
    b = write_samples(tmp_path / "b", [("single_1", 4096, True), ("single_2", 4096, True),
                                        ("single_1", 8192, False), ("single_2", 8192, False),
                                        ("single_1", 16384, True)])  # (16K: b alone, left out)
    rows = niah_pool.pooled_table([a, b], ["a", "b"]).splitlines()
    assert rows[0] == "| length | a | b | range | pooled (95% interval) | answers |"
    low, high = accuracy_interval(3 / 4, 4)
    assert rows[2] == f"| 4K | 50.0 | 100.0 | 50.0-100.0 | **75.0** ({100 * low:.0f}-{100 * high:.0f}) | 3 / 4 |"
    assert rows[3].startswith("| 8K | 100.0 | 0.0 | 0.0-100.0 | **50.0** (")
    assert rows[4].startswith("| all | 75.0 | 50.0 | 50.0-75.0 | **62.5** (") and rows[4].endswith("| 5 / 8 |")
    assert len(rows) == 5


def test_a_packed_samples_file_pools_as_the_plain_one(tmp_path):
    rows = [("single_1", 4096, True), ("single_2", 4096, False)]
    plain = write_samples(tmp_path / "plain", rows)
    packed = write_samples(tmp_path / "packed", rows)
    (packed / "niah_samples.jsonl.xz").write_bytes(lzma.compress((packed / "niah_samples.jsonl").read_bytes()))
    (packed / "niah_samples.jsonl").unlink()
    assert niah_pool.counts(packed) == niah_pool.counts(plain)
    assert niah_pool.counts(packed)[0] == {4096: 1}


def test_a_folder_without_samples_says_what_to_give(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no .*niah_samples.jsonl: give evaluation folders of `hypenet eval"):
        niah_pool.pooled_table([tmp_path / "empty"], ["empty"])


def test_runs_without_a_common_length_are_refused(tmp_path):
    a = write_samples(tmp_path / "a", [("single_1", 4096, True)])
    b = write_samples(tmp_path / "b", [("single_1", 8192, True)])
    with pytest.raises(SystemExit, match="share no context length"):
        niah_pool.pooled_table([a, b], ["a", "b"])


def test_tasks_keeps_those_tasks_answers_only(tmp_path):
    a = write_samples(tmp_path / "a", [("single_1", 4096, True), ("single_2", 4096, False), ("single_3", 4096, False)])
    b = write_samples(tmp_path / "b", [("single_1", 4096, False), ("single_2", 4096, True), ("single_3", 4096, True)])
    rows = niah_pool.pooled_table([a, b], ["a", "b"], ["single_1"]).splitlines()
    assert rows[2].startswith("| 4K | 100.0 | 0.0 | 0.0-100.0 | **50.0** (") and rows[2].endswith("| 1 / 2 |")
    rows = niah_pool.pooled_table([a, b], ["a", "b"], ["single_2", "single_3"]).splitlines()
    assert rows[2].startswith("| 4K | 0.0 | 100.0 | 0.0-100.0 | **50.0** (") and rows[2].endswith("| 2 / 4 |")


def test_a_task_a_run_never_asked_is_refused(tmp_path):
    a = write_samples(tmp_path / "a", [("single_1", 4096, True)])
    with pytest.raises(SystemExit, match="has no answers of single_2; its tasks: single_1"):
        niah_pool.pooled_table([a], ["a"], ["single_2"])
