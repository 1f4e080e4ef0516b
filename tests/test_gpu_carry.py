"""scripts/gpu_carry.py: what a lease carries, cut into device calls that fit beside the working tree."""

import hashlib
import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("gpu_carry", Path(__file__).parent.parent / "scripts" / "gpu_carry.py")
carry = importlib.util.module_from_spec(spec)
spec.loader.exec_module(carry)


def test_plan_places_items_first_fit_then_fills_calls_with_the_teacher():
    calls = carry.plan(10_000_000, [("wheels", 6_000_000), ("corpus", 5_000_000), ("cache", 3_000_000)], 25_000_000)
    assert [c["carry"] for c in calls] == [["wheels", "cache"], ["corpus"], [], []]
    assert [c["parts"] for c in calls] == [[1_000_000], [5_000_000], [10_000_000], [9_000_000]]
    assert all(c["bytes"] <= 10_000_000 for c in calls)
    assert sum(sum(c["parts"]) for c in calls) == 25_000_000


def test_plan_leaves_no_part_smaller_than_a_megabyte_in_a_full_call():
    calls = carry.plan(10_000_000, [("wheels", 9_500_000)], 12_000_000)
    assert [c["parts"] for c in calls] == [[], [10_000_000], [2_000_000]]
    assert carry.plan(10_000_000, [("wheels", 9_500_000)], 400_000)[0]["parts"] == [400_000]  # all that is left


def test_plan_names_an_item_too_large_for_any_call():
    with pytest.raises(ValueError, match=r"corpus \(12.0 MB\) does not fit in a call beside the tree"):
        carry.plan(10_000_000, [("corpus", 12_000_000)], 1)


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / ".gitignore").write_text(".carry/\n.whl/\n")
    (repo / "tracked.bin").write_bytes(b"t" * 1_200_000)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    (repo / "untracked.txt").write_bytes(b"u" * 300_000)  # copied too: git does not ignore it
    (repo / ".whl").mkdir()
    (repo / ".whl" / "a.whl").write_bytes(b"w" * 1_500_000)
    (repo / ".carry" / "c").mkdir(parents=True)
    (repo / ".carry" / "c" / "corpus.jsonl.xz").write_bytes(b"c" * 1_000_000)
    (repo / ".carry" / "p7").mkdir()
    (repo / ".carry" / "p7" / "gguf.part7").write_bytes(b"old")  # an earlier cut's part
    return repo


def test_main_cuts_the_teacher_into_parts_that_join_to_it(tmp_path, capsys, monkeypatch):
    repo = _repo(tmp_path)
    teacher = tmp_path / "teacher.gguf"
    teacher.write_bytes(os.urandom(4_100_000))
    monkeypatch.chdir(repo)
    assert carry.tree_bytes(repo) == 1_200_000 + 300_000 + len(".carry/\n.whl/\n")
    carry.main(["--teacher", str(teacher), "--per-call", "5100000"])
    printed = capsys.readouterr().out.splitlines()
    parts = sorted(repo.glob(".carry/p*/gguf.part*"), key=lambda p: int(p.parent.name[1:]))
    assert [p.parent.name for p in parts] == [f"p{n}" for n in range(1, len(parts) + 1)]  # p7 removed
    assert b"".join(p.read_bytes() for p in parts) == teacher.read_bytes()
    assert list(repo.glob(".carry/*/gguf.sha256")) == [parts[-1].parent / "gguf.sha256"]
    assert parts[-1].with_name("gguf.sha256").read_text().strip() == hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert printed[1].startswith("call 1: carry .whl, .carry/c, .carry/p1 (") and "install the wheels" in printed[1]
    assert printed[-1].endswith("then the lease's script")
    assert all(float(line.split("(")[1].split(" MB")[0]) <= 5.1 for line in printed[1:])


def test_main_refuses_a_tree_that_leaves_no_room(tmp_path, capsys, monkeypatch):
    repo = _repo(tmp_path)
    (tmp_path / "teacher.gguf").write_bytes(b"g" * 10)
    monkeypatch.chdir(repo)
    with pytest.raises(SystemExit):
        carry.main(["--teacher", str(tmp_path / "teacher.gguf"), "--per-call", "2000000"])
    assert "shrink the tree first" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        carry.main(["--teacher", str(tmp_path / "missing.gguf")])
    assert "no such file or folder" in capsys.readouterr().err
