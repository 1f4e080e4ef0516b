"""Cut what a lease carries to the device machine into calls that fit beside the working tree.

Each device call copies the working tree (tracked files, and untracked ones that git does not ignore) with the paths
named in its `carry`; a call of 64.1 MB in all went through and one of 66.4 MB was refused
(results/gpu_convert/README.md, "Next leases"). The tree grows with every lease's returns, so the teacher (a 98-MB
GGUF) travels in parts, which scripts/gpu_setup.sh joins in order (.carry/p1/gguf.part1, .carry/p2/gguf.part2, ...)
and checks against the .carry/*/gguf.sha256 written beside the last part. Run from the repository root:

    python scripts/gpu_carry.py --teacher SmolLM2-135M-Instruct.Q4_1.gguf [--per-call 64000000] [--wheels .whl]
        [--corpus .carry/c] [--cache .carry/triton_cache.txz]

It writes the parts and the checksum, removes the parts of an earlier cut, and prints one line per call: the paths to
carry and the bytes with the tree. The wheels, the corpus and the cache go first, each into the first call with room
(call 1 holds the wheels and installs them); the teacher's parts fill what is left, call by call. Paths persist on
the machine between calls while it is held, so the lease's script runs in the last call.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
from pathlib import Path

MB = 1_000_000
MIN_PART = 1 * MB  # a call with less room than this left gets no part of the teacher


def tree_bytes(root: Path) -> int:
    """The bytes a device call copies of the working tree: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            check=True, capture_output=True).stdout.decode().split("\0")
    return sum((root / name).stat().st_size for name in set(listed) if name and (root / name).is_file())


def path_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def plan(room: int, items: list[tuple[str, int]], teacher: int) -> list[dict]:
    """Calls of at most `room` bytes each: `items` (name, bytes) placed in order, each into the first call with room
    for it, then the teacher's `teacher` bytes cut into parts that fill each call's room left and then new calls.
    Each call: {"carry": [names], "parts": [bytes of each teacher part, in order], "bytes": total}."""
    calls: list[dict] = []
    for name, size in items:
        if size > room:
            raise ValueError(f"{name} ({size / MB:.1f} MB) does not fit in a call beside the tree ({room / MB:.1f} MB "
                             "left of --per-call): shrink it, or the tree (re-save large results, drop old logs)")
        call = next((c for c in calls if c["bytes"] + size <= room), None)
        if call is None:
            call = {"carry": [], "parts": [], "bytes": 0}
            calls.append(call)
        call["carry"].append(name)
        call["bytes"] += size
    left = teacher
    for call in calls:
        part = min(left, room - call["bytes"])
        if left and part >= min(MIN_PART, left):
            call["parts"].append(part)
            call["bytes"] += part
            left -= part
    while left:
        part = min(left, room)
        calls.append({"carry": [], "parts": [part], "bytes": part})
        left -= part
    return calls


def cut(teacher: Path, calls: list[dict], carry_dir: Path) -> list[Path]:
    """Write the teacher's parts as carry_dir/pN/gguf.partN (N from 1, in the calls' order) with gguf.sha256 beside
    the last, after removing the parts and checksums of an earlier cut. Returns the parts' folders, in order."""
    for old in list(carry_dir.glob("p[0-9]*")):
        if old.is_dir() and old.name[1:].isdigit():
            shutil.rmtree(old)
    if not any(call["parts"] for call in calls):
        raise ValueError("the plan holds no part of the teacher")
    folders, digest = [], hashlib.sha256()
    with teacher.open("rb") as source:
        for size in (s for call in calls for s in call["parts"]):
            folder = carry_dir / f"p{len(folders) + 1}"
            folder.mkdir(parents=True)
            data = source.read(size)
            digest.update(data)
            (folder / f"gguf.part{len(folders) + 1}").write_bytes(data)
            folders.append(folder)
    (folders[-1] / "gguf.sha256").write_text(digest.hexdigest() + "\n")
    return folders


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher's .gguf file")
    parser.add_argument("--per-call", type=int, default=64 * MB, help="bytes a call may carry with the tree")
    parser.add_argument("--wheels", type=Path, default=Path(".whl"), help="folder of the wheels that call 1 installs")
    parser.add_argument("--corpus", type=Path, default=Path(".carry/c"), help="folder of the corpus")
    parser.add_argument("--cache", type=Path, default=Path(".carry/triton_cache.txz"),
                        help="a Triton cache from an earlier lease (skipped when missing)")
    parser.add_argument("--carry-dir", type=Path, default=Path(".carry"), help="where the parts are written")
    args = parser.parse_args(argv)
    for path in (args.teacher, args.wheels, args.corpus):
        if not path.exists():
            parser.error(f"no such file or folder: {path}")
    tree = tree_bytes(Path.cwd())
    room = args.per_call - tree
    if room < MIN_PART:
        parser.error(f"the tree is {tree / MB:.1f} MB, which leaves {room / MB:.1f} MB of --per-call "
                     f"{args.per_call / MB:.1f} MB: shrink the tree first")
    items = [(str(p), path_bytes(p)) for p in (args.wheels, args.corpus, args.cache) if p.exists()]
    try:
        calls = plan(room, items, args.teacher.stat().st_size)
    except ValueError as error:
        parser.error(str(error))
    folders = iter(cut(args.teacher, calls, args.carry_dir))
    print(f"tree {tree / MB:.1f} MB; {len(calls)} calls of at most {args.per_call / MB:.1f} MB with it")
    for n, call in enumerate(calls, 1):
        carry = call["carry"] + [str(next(folders)) for _ in call["parts"]]
        steps = ["install the wheels"] if str(args.wheels) in call["carry"] else []
        steps += ["the lease's script"] if n == len(calls) else [] if steps else ["ls -la .carry/*"]
        then = ", then ".join(steps)
        print(f"call {n}: carry {', '.join(carry)} ({(call['bytes'] + tree) / MB:.1f} MB with the tree); then {then}")


if __name__ == "__main__":
    main()
