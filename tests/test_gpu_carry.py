"""scripts/gpu_carry.py: what a lease carries, cut into device calls that fit beside the working tree."""

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import load_script

carry = load_script("gpu_carry")
SETUP = Path(__file__).resolve().parent.parent / "scripts" / "gpu_setup.sh"


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


def test_plan_splits_an_item_too_large_for_a_call_into_parts_that_fill_calls():
    files = {"wheels": [("w/small.whl", 300_000), ("w/big.whl", 14_000_000)]}  # the corpus: one file of its name
    items = [("wheels", 14_300_000), ("corpus", 12_000_000), ("cache", 3_000_000)]
    calls = carry.plan(10_000_000, items, 25_000_000, files)
    assert [c["carry"] for c in calls] == [["cache"], [], [], [], [], []]
    assert [c["split"] for c in calls] == [[("w/small.whl", 300_000), ("w/big.whl", 6_700_000)],
                                           [("w/big.whl", 7_300_000), ("corpus", 2_700_000)],
                                           [("corpus", 9_300_000)], [], [], []]
    # 0.7 MB left in call 3: less than a part's least, so the teacher starts in call 4
    assert [c["parts"] for c in calls] == [[], [], [], [10_000_000], [10_000_000], [5_000_000]]
    assert all(c["bytes"] == sum(s for _, s in c["split"]) + sum(c["parts"]) + (3_000_000 if c["carry"] else 0)
               <= 10_000_000 for c in calls)
    for stream, size in files["wheels"] + [("corpus", 12_000_000)]:
        assert sum(s for c in calls for name, s in c["split"] if name == stream) == size
    # a call with less room left than a part's least gets a part only when it is all that is left of its file
    calls = carry.plan(10_000_000, [("cache", 9_500_000), ("corpus", 10_600_000)], 300_000)
    assert [c["split"] for c in calls] == [[], [("corpus", 10_000_000)], [("corpus", 600_000)]]
    assert [c["parts"] for c in calls] == [[300_000], [], []]
    with pytest.raises(ValueError, match=r"two files split into parts of one name \(a.whl\)"):
        carry.plan(10_000_000, [("w", 12_000_000)], 1, {"w": [("w/a.whl", 6_000_000), ("w/x/a.whl", 6_000_000)]})


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
    assert sum(carry.tree_files(repo).values()) == 1_200_000 + 300_000 + len(".carry/\n.whl/\n")
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


def test_main_names_json_lines_and_logs_left_uncompressed_in_results(tmp_path, capsys, monkeypatch):
    repo = _repo(tmp_path)
    (repo / "results" / "lease").mkdir(parents=True)
    (repo / "results" / "lease" / "niah_samples.jsonl").write_text('{"correct": true}\n' * 1000)
    (repo / "results" / "lease" / "losses.jsonl.xz").write_bytes(b"packed")
    (repo / "results" / "lease" / "convert.log").write_text("stage2: loss=1\n")
    (repo / "results" / "lease" / "setup.log.xz").write_bytes(b"packed")
    (repo / "docs.jsonl").write_text("{}\n")  # outside results/: left alone
    (tmp_path / "teacher.gguf").write_bytes(b"g" * 10)
    monkeypatch.chdir(repo)
    assert carry.plain_records(carry.tree_files(repo)) == ["results/lease/convert.log",
                                                           "results/lease/niah_samples.jsonl"]
    carry.main(["--teacher", str(tmp_path / "teacher.gguf"), "--per-call", "5100000"])
    assert ("2 JSON-lines file(s) or log(s) under results/ not compressed (0.0 MB, e.g. results/lease/convert.log)"
            in capsys.readouterr().err)
    (repo / "results" / "lease" / "niah_samples.jsonl").unlink()
    (repo / "results" / "lease" / "convert.log").unlink()
    carry.main(["--teacher", str(tmp_path / "teacher.gguf"), "--per-call", "5100000"])
    assert "JSON-lines" not in capsys.readouterr().err


def test_main_takes_the_triton_cache_from_history_when_none_is_carried(tmp_path, capsys, monkeypatch):
    repo = _repo(tmp_path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    tracked = repo / "results" / "cache.txz"
    tracked.parent.mkdir()
    for content in (b"first", b"second"):  # the last version committed is the one taken
        tracked.write_bytes(content)
        subprocess.run(git + ["add", "."], cwd=repo, check=True)
        subprocess.run(git + ["commit", "-qm", "cache"], cwd=repo, check=True)
    subprocess.run(git + ["rm", "-q", "results/cache.txz"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "out of the tree"], cwd=repo, check=True)
    (tmp_path / "teacher.gguf").write_bytes(b"g" * 10)
    monkeypatch.chdir(repo)
    cache = repo / ".carry" / "triton_cache.txz"
    carry.main(["--teacher", str(tmp_path / "teacher.gguf"), "--cache-history", "results/cache.txz"])
    printed = capsys.readouterr().out.splitlines()
    assert cache.read_bytes() == b"second"
    assert printed[0].startswith(".carry/triton_cache.txz: results/cache.txz as committed in ")
    assert ".carry/triton_cache.txz" in printed[2]  # carried in the first call with room
    cache.write_bytes(b"returned by the last lease")  # a cache already carried is kept
    carry.main(["--teacher", str(tmp_path / "teacher.gguf"), "--cache-history", "results/cache.txz"])
    assert cache.read_bytes() == b"returned by the last lease" and "as committed in" not in capsys.readouterr().out
    cache.unlink()
    carry.main(["--teacher", str(tmp_path / "teacher.gguf"), "--cache-history", ""])
    assert not cache.exists() and ".carry/triton_cache.txz" not in capsys.readouterr().out
    carry.main(["--teacher", str(tmp_path / "teacher.gguf"), "--cache-history", "results/never.txz"])
    assert not cache.exists() and capsys.readouterr().err.startswith("no Triton cache: ")


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


def _stream(repo: Path, name: str) -> list[Path]:
    """A stream's parts, .carry/p*/NAME.part1, NAME.part2, ..., in K order."""
    parts = sorted(repo.glob(f".carry/p*/{name}.part*"), key=lambda p: int(p.name.rsplit(".part", 1)[1]))
    assert [p.name for p in parts] == [f"{name}.part{k}" for k in range(1, len(parts) + 1)]
    return parts


def _split_repo(tmp_path: Path, capsys, monkeypatch) -> tuple[Path, dict[str, bytes], list[str]]:
    """_repo with a wheel and a corpus too large for a call, cut by main; returns the files split and the plan."""
    repo = _repo(tmp_path)
    originals = {".whl/a.whl": (repo / ".whl" / "a.whl").read_bytes(), ".whl/big.whl": os.urandom(3_000_000),
                 ".carry/c/corpus.jsonl.xz": os.urandom(2_600_000), "teacher": os.urandom(4_100_000)}
    for path, data in originals.items():
        (tmp_path / "teacher.gguf" if path == "teacher" else repo / path).write_bytes(data)
    monkeypatch.chdir(repo)
    carry.main(["--teacher", str(tmp_path / "teacher.gguf"), "--per-call", "4000000"])  # 2.5 MB of room a call
    return repo, originals, capsys.readouterr().out.splitlines()


def test_main_splits_items_too_large_for_a_call_into_parts_with_their_checksums(tmp_path, capsys, monkeypatch):
    repo, originals, printed = _split_repo(tmp_path, capsys, monkeypatch)
    for path, data in originals.items():
        name = "gguf" if path == "teacher" else Path(path).name
        parts = _stream(repo, name)
        assert b"".join(p.read_bytes() for p in parts) == data
        assert [p.name for p in repo.glob(f".carry/*/{name}.sha256")] == [f"{name}.sha256"]
        line = (parts[-1].parent / f"{name}.sha256").read_text()
        digest = hashlib.sha256(data).hexdigest()
        assert line == (f"{digest}\n" if path == "teacher" else f"{digest}  {path}\n")
    folders = sorted(int(p.name[1:]) for p in repo.glob(".carry/p*"))
    assert folders == list(range(1, len(folders) + 1))  # p7 removed
    assert not (repo / ".carry" / "p1" / "gguf.part1").exists()  # the teacher follows the split files
    assert printed[0].startswith("tree 1.5 MB; ") and len(printed) == len(folders) + 1
    for n, line in enumerate(printed[1:], 1):
        assert line.startswith(f"call {n}: carry .carry/p{n} (") and "install the wheels" not in line
        assert float(line.split("(")[1].split(" MB")[0]) <= 4.0
    assert printed[-1].endswith("then the lease's script")


def _join(repo: Path, tmp_path: Path, teacher: str | None = None) -> subprocess.CompletedProcess:
    script = SETUP
    env = {**os.environ, "RUNS": str(tmp_path), "TEACHER": teacher or str(tmp_path / "t.gguf"), "WHEELS": ".whl",
           "CORPUS": ".carry/c/corpus.jsonl.xz", "TRITON_CACHE": str(tmp_path / "none.txz")}
    return subprocess.run(["bash", "-c", f"source {script}; join_parts"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=60)


def test_setup_joins_the_split_files_where_they_belong_and_refuses_a_wrong_part(tmp_path, capsys, monkeypatch):
    repo, originals, _ = _split_repo(tmp_path, capsys, monkeypatch)
    shutil.rmtree(repo / ".whl")  # what the device machine lacks
    (repo / ".carry" / "c" / "corpus.jsonl.xz").unlink()
    run = _join(repo, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    for path, data in originals.items():
        assert (tmp_path / "t.gguf" if path == "teacher" else repo / path).read_bytes() == data
    assert not list(repo.rglob("*.tmp")) and not list(tmp_path.glob("*.tmp"))
    assert _join(repo, tmp_path).returncode == 0  # all there: nothing to do
    (repo / ".whl" / "big.whl").unlink()
    part = _stream(repo, "big.whl")[1]
    part.write_bytes(b"x" + part.read_bytes()[1:])
    run = _join(repo, tmp_path)
    parts = " ".join(str(p.relative_to(repo)) for p in _stream(repo, "big.whl"))
    sums = next(repo.glob(".carry/*/big.whl.sha256")).relative_to(repo)
    assert run.returncode == 1
    assert f".whl/big.whl reassembled from {parts} does not match {sums}: a part missing?" in run.stdout
    assert not (repo / ".whl" / "big.whl").exists() and not (repo / ".whl" / "big.whl.tmp").exists()


def test_timed_step_adds_each_call_to_the_step_log(tmp_path):
    """A step resumed by a later call keeps the earlier calls' output in its log (how the earlier one stopped)."""
    script = SETUP
    env = {**os.environ, "RUNS": str(tmp_path), "TRITON_CACHE": str(tmp_path / "none.txz")}
    steps = "; ".join(f"timed_step {tmp_path} convert echo call-{n}" for n in (1, 2))
    run = subprocess.run(["bash", "-c", f"source {script}; DEADLINE=600 START=$SECONDS; {steps}"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = (tmp_path / "convert.log").read_text().splitlines()
    assert [line for line in lines if not line.startswith("=== ")] == ["call-1", "call-2"]
    assert len(lines) == 4 and all(re.fullmatch(r"=== \S+Z convert, 5[78]\d s left", lines[i]) for i in (0, 2))


def test_setup_turns_the_crash_traceback_on_and_leaves_the_signal_trace_to_the_caller(tmp_path):
    """The lease scripts write a crash's traceback (PYTHONFAULTHANDLER) but no longer turn the engine's signal trace
    on: its dump of every thread segfaulted the fifty-fifth lease's deadline stop. A caller who sets either keeps
    its value."""
    script = SETUP
    base = {k: v for k, v in os.environ.items() if k not in ("HYPENET_SIGNAL_TRACE", "PYTHONFAULTHANDLER")}
    show = 'echo "${HYPENET_SIGNAL_TRACE-unset} ${PYTHONFAULTHANDLER-unset}"'
    for extra, expected in (({}, "unset 1"), ({"HYPENET_SIGNAL_TRACE": "1", "PYTHONFAULTHANDLER": "0"}, "1 0")):
        env = {**base, **extra, "RUNS": str(tmp_path), "TRITON_CACHE": str(tmp_path / "none.txz")}
        run = subprocess.run(["bash", "-c", f"source {script}; {show}"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert run.stdout.split("\n")[-2] == expected


def test_timed_step_says_in_the_log_how_a_stopped_step_ended(tmp_path):
    """A step still running at the deadline gets SIGINT, then SIGKILL 10 s later: GNU timeout exits 124 when the step
    ended within the 10 s, 137 when it had to be killed. The log says which (the three leases whose stop lost its
    checkpoint could not tell). A stand-in `timeout` exits with the code each step names, to spare the test the
    deadline's half minute (`timeout --signal=INT --kill-after=2 1 sleep 10` exits 124, and with a command that
    ignores SIGINT 137)."""
    script = SETUP
    fake = tmp_path / "bin" / "timeout"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nshift 3\nexec "$@"\n')  # drops --signal, --kill-after and the seconds
    fake.chmod(0o755)
    env = {**os.environ, "RUNS": str(tmp_path), "TRITON_CACHE": str(tmp_path / "none.txz"),
           "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    steps = "; ".join(f"timed_step {tmp_path} {name} sh -c 'exit {code}'"
                      for name, code in (("ends", 124), ("killed", 137), ("failed", 1), ("fine", 0)))
    run = subprocess.run(["bash", "-c", f"source {script}; DEADLINE=600 START=$SECONDS; {steps}"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    last = {name: (tmp_path / f"{name}.log").read_text().splitlines()[-1] for name in ("ends", "killed", "failed")}
    assert last == {"ends": "  ends stopped: exit 124 (the deadline's SIGINT; it ended within the 10 s after)",
                    "killed": "  killed stopped: exit 137 (killed: still running 10 s after the deadline's SIGINT)",
                    "failed": "  failed stopped: exit 1"}
    assert all(line in run.stdout for line in last.values())
    assert (tmp_path / "fine.log").read_text().splitlines()[-1].startswith("=== ")  # nothing added for a success


def _pack(tmp_path: Path, out: Path, before: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "RUNS": str(tmp_path), "TRITON_CACHE": str(tmp_path / "none.txz"), "HOME": str(tmp_path)}
    return subprocess.run(["bash", "-c", f"source {SETUP}; {before} pack_triton_cache {out}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_pack_triton_cache_leaves_a_whole_archive_or_none(tmp_path):
    """The Triton cache is packed under another name and renamed when whole. The fifty-seventh lease's last call was
    ended by its timeout while it packed, and an empty triton_cache.txz came back under the cache's name."""
    cache = tmp_path / ".triton" / "cache" / "abc"
    cache.mkdir(parents=True)
    (cache / "kernel.json").write_text('{"name": "chunk_fwd"}')
    out = tmp_path / "out"
    out.mkdir()
    run = _pack(tmp_path, out)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["triton_cache.txz"]
    listed = subprocess.run(["tar", "tJf", str(out / "triton_cache.txz")], capture_output=True, text=True, check=True)
    assert "./abc/kernel.json" in listed.stdout.split()
    for cut in ("return 1", "kill -KILL $$"):  # tar fails, or the whole script is killed mid-archive
        shutil.rmtree(out)
        out.mkdir()
        run = _pack(tmp_path, out, f'tar() {{ echo half > "${{@: -4:1}}"; {cut}; }};')
        assert run.returncode != 0
        assert not (out / "triton_cache.txz").exists(), cut
        assert [p.name for p in out.iterdir()] == ([] if cut == "return 1" else [".triton_cache.txz.part"])


def test_join_without_a_teacher_joins_the_rest(tmp_path, capsys, monkeypatch):
    """TEACHER=embedded (a call that carries only the wheels' parts, e.g. for the GPU-side tests): no teacher is
    joined or asked for, the other files are."""
    repo, originals, _ = _split_repo(tmp_path, capsys, monkeypatch)
    shutil.rmtree(repo / ".whl")
    for part in repo.glob(".carry/*/gguf.*"):
        part.unlink()
    run = _join(repo, tmp_path, teacher="embedded")
    assert run.returncode == 0, run.stdout + run.stderr
    assert (repo / ".whl" / "big.whl").read_bytes() == originals[".whl/big.whl"]
    assert _join(repo, tmp_path).returncode == 1  # a teacher asked for and not carried
