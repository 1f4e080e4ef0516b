"""Cut what a lease carries to the device machine into calls that fit beside the working tree.

Each device call copies the working tree (tracked files, and untracked ones that git does not ignore) with the paths
named in its `carry`; a call of 64.1 MB in all went through and one of 66.4 MB was refused
(results/gpu_convert/README.md, "Next leases"). The tree grows with every lease's returns, so the teacher (a 98-MB
GGUF), and each file of an item too large for one call's room (the wheels, the corpus), travels in parts:
.carry/pN/NAME.partK, pN the call's folder and K counting that file's parts from 1 (NAME is gguf for the teacher,
else the file's name), with NAME.sha256 beside its last part (for the teacher the digest alone, else a
`sha256sum --check` line naming the file's path). scripts/gpu_setup.sh joins them on the device. Run from the
repository root:

    python scripts/gpu_carry.py --teacher SmolLM2-135M-Instruct.Q4_1.gguf [--per-call 64000000] [--wheels .whl]
        [--corpus .carry/c] [--cache .carry/triton_cache.txz] [--cache-history PATH]

It writes the parts and the checksums, removes the parts of an earlier cut, and prints one line per call: the paths to
carry and the bytes with the tree. The wheels, the corpus and the cache go first, each that fits whole into the first
call with room (the call that holds the wheels whole installs them; split wheels are installed by setup); then the
split files' parts and the teacher's, in that order, fill what is left, call by call. Paths persist on the machine
between calls while it is held, so the lease's script runs in the last call.

The Triton cache is kept in git's history, not in the working tree, where it would travel with every call: when
--cache is missing, it is written there from the last commit that added or changed --cache-history
(results/gpu_convert/triton_cache.txz; to keep a newer one, commit it there, then remove it in the next commit).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

MB = 1_000_000
MIN_PART = 1 * MB  # a call with less room than this left gets no part, unless it is all that is left of a file


def tree_files(root: Path) -> dict[str, int]:
    """The files a device call copies of the working tree, with their bytes: tracked files and untracked ones git
    does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            check=True, capture_output=True).stdout.decode().split("\0")
    return {name: (root / name).stat().st_size for name in set(listed) if name and (root / name).is_file()}


RECORDS = (".jsonl", ".log")


def plain_records(files: dict[str, int]) -> list[str]:
    """The JSON-lines files and logs under results/ not yet compressed: results/ keeps them as NAME.jsonl.xz and
    NAME.log.xz (`xz -9`, about an eighth of the size; hypenet.files reads them under their plain names, and the notes
    name the .xz), so that every call carries less."""
    return sorted(name for name in files if name.startswith("results/") and name.endswith(RECORDS))


def cache_from_history(cache: Path, tracked: str, root: Path) -> str | None:
    """Write `tracked` as it was in the last commit that added or changed it to `cache`; the commit, or None when
    no commit has it."""
    log = subprocess.run(["git", "log", "-1", "--format=%H", "--diff-filter=AM", "--", tracked], cwd=root,
                         capture_output=True, text=True)  # fails in a repository without commits
    found = log.stdout.strip()
    if log.returncode or not found:
        return None
    blob = subprocess.run(["git", "show", f"{found}:{tracked}"], cwd=root, check=True, capture_output=True).stdout
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(blob)
    return found


def path_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def path_files(path: Path) -> list[tuple[str, int]]:
    """A file, or a folder's files in order: (path, bytes) each."""
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return [(str(f), f.stat().st_size) for f in files]


def stream_name(path: str | None) -> str:
    """The name of a stream's parts and checksum: gguf for the teacher (None), else the file's name."""
    return "gguf" if path is None else Path(path).name


def plan(room: int, items: list[tuple[str, int]], teacher: int,
         files: dict[str, list[tuple[str, int]]] | None = None) -> list[dict]:
    """Calls of at most `room` bytes each. `items` (name, bytes) that fit in a call go whole, in order, each into the
    first call with room for it; an item that does not is split: each of its files (files[name]: (path, bytes) in
    order; the item itself when not named there) becomes a stream. The streams, then the teacher's `teacher` bytes,
    are cut into parts that fill each call's room left, in order, and then new calls; a call gets no part smaller
    than MIN_PART unless it is all that is left of its stream.
    Each call: {"carry": [names], "split": [(path, bytes) of each part of a split file], "parts": [bytes of each
    teacher part], "bytes": total}."""
    if room < MIN_PART:
        raise ValueError(f"{room / MB:.1f} MB of room in a call: less than a part's least ({MIN_PART / MB:.1f} MB)")
    calls: list[dict] = []

    def new_call() -> dict:
        calls.append({"carry": [], "split": [], "parts": [], "bytes": 0})
        return calls[-1]

    streams: list[tuple[str | None, int]] = []
    for name, size in items:
        if size > room:
            streams += (files or {}).get(name, [(name, size)])
            continue
        call = next((c for c in calls if c["bytes"] + size <= room), None) or new_call()
        call["carry"].append(name)
        call["bytes"] += size
    clashes = [name for name, n in Counter(stream_name(p) for p, _ in streams + [(None, 0)]).items() if n > 1]
    if clashes:
        raise ValueError(f"two files split into parts of one name ({', '.join(clashes)}): rename one")
    for path, size in streams + [(None, teacher)]:
        left, n = size, 0
        while True:
            call = calls[n] if n < len(calls) else new_call()
            part = min(left, room - call["bytes"])
            if part >= min(MIN_PART, left):
                if path is None:
                    call["parts"].append(part)
                else:
                    call["split"].append((path, part))
                call["bytes"] += part
                left -= part
                if not left:
                    break
            n += 1
    return calls


def cut(teacher: Path, calls: list[dict], carry_dir: Path) -> list[Path | None]:
    """Write each call's parts into carry_dir/pN (N counting the calls that hold any part, from 1) as NAME.partK (K
    counting that stream's parts from 1, NAME its stream_name), with NAME.sha256 beside each stream's last part: the
    hex digest alone for the teacher, else a `sha256sum --check` line naming the file's path. Removes the parts and
    checksums of an earlier cut first. Returns each call's folder, None for a call that holds no part."""
    for old in list(carry_dir.glob("p[0-9]*")):
        if old.is_dir() and old.name[1:].isdigit():
            shutil.rmtree(old)
    if not any(call["parts"] for call in calls):
        raise ValueError("the plan holds no part of the teacher")
    folders: list[Path | None] = []
    done: dict[str | None, tuple[int, object, int, Path]] = {}  # stream: bytes cut, digest, parts, last folder
    for call in calls:
        pieces = call["split"] + [(None, size) for size in call["parts"]]
        if not pieces:
            folders.append(None)
            continue
        folder = carry_dir / f"p{sum(f is not None for f in folders) + 1}"
        folder.mkdir(parents=True)
        folders.append(folder)
        for path, size in pieces:
            offset, digest, k, _ = done.get(path, (0, hashlib.sha256(), 0, folder))
            with (teacher if path is None else Path(path)).open("rb") as source:
                source.seek(offset)
                data = source.read(size)
            digest.update(data)
            (folder / f"{stream_name(path)}.part{k + 1}").write_bytes(data)
            done[path] = (offset + size, digest, k + 1, folder)
    for path, (_, digest, _, folder) in done.items():
        line = digest.hexdigest() if path is None else f"{digest.hexdigest()}  {path}"
        (folder / f"{stream_name(path)}.sha256").write_text(line + "\n")
    return folders


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher's .gguf file")
    parser.add_argument("--per-call", type=int, default=64 * MB, help="bytes a call may carry with the tree")
    parser.add_argument("--wheels", type=Path, default=Path(".whl"), help="folder of the wheels that setup installs")
    parser.add_argument("--corpus", type=Path, default=Path(".carry/c"), help="folder of the corpus")
    parser.add_argument("--cache", type=Path, default=Path(".carry/triton_cache.txz"),
                        help="a Triton cache from an earlier lease (from --cache-history when missing)")
    parser.add_argument("--cache-history", default="results/gpu_convert/triton_cache.txz",
                        help="the repository path whose last committed version is the cache when --cache is missing "
                             "('' for none)")
    parser.add_argument("--carry-dir", type=Path, default=Path(".carry"), help="where the parts are written")
    args = parser.parse_args(argv)
    for path in (args.teacher, args.wheels, args.corpus):
        if not path.exists():
            parser.error(f"no such file or folder: {path}")
    if not args.cache.exists() and args.cache_history:
        commit = cache_from_history(args.cache, args.cache_history, Path.cwd())
        if commit:
            print(f"{args.cache}: {args.cache_history} as committed in {commit[:7]}")
        else:
            print(f"no Triton cache: {args.cache} is missing and no commit has {args.cache_history} (a shallow "
                  "clone?); the lease compiles its kernels (~210 s more of stage 1 and the layer choice)",
                  file=sys.stderr)
    files = tree_files(Path.cwd())
    tree = sum(files.values())
    plain = plain_records(files)
    if plain:
        size = sum(files[n] for n in plain) / MB
        print(f"{len(plain)} JSON-lines file(s) or log(s) under results/ not compressed ({size:.1f} MB, e.g. "
              f"{plain[0]}): `xz -9` them and commit, and every call carries about 7/8 of that less",
              file=sys.stderr)
    room = args.per_call - tree
    if room < MIN_PART:
        parser.error(f"the tree is {tree / MB:.1f} MB, which leaves {room / MB:.1f} MB of --per-call "
                     f"{args.per_call / MB:.1f} MB: shrink the tree first")
    present = [p for p in (args.wheels, args.corpus, args.cache) if p.exists()]
    items = [(str(p), path_bytes(p)) for p in present]
    try:
        calls = plan(room, items, args.teacher.stat().st_size, {str(p): path_files(p) for p in present})
    except ValueError as error:
        parser.error(str(error))
    folders = cut(args.teacher, calls, args.carry_dir)
    print(f"tree {tree / MB:.1f} MB; {len(calls)} calls of at most {args.per_call / MB:.1f} MB with it")
    for n, (call, folder) in enumerate(zip(calls, folders), 1):
        carry = call["carry"] + ([str(folder)] if folder else [])
        steps = ["install the wheels"] if str(args.wheels) in call["carry"] else []
        steps += ["the lease's script"] if n == len(calls) else [] if steps else ["ls -la .carry/*"]
        then = ", then ".join(steps)
        print(f"call {n}: carry {', '.join(carry)} ({(call['bytes'] + tree) / MB:.1f} MB with the tree); then {then}")


if __name__ == "__main__":
    main()
