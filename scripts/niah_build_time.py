"""How long building a NIAH grid takes on this machine, in one thread and in more, and whether the grids match.

Building the prompts is CPU work (tokenising each haystack up to its length a few times) that comes before any model
runs. `hypenet eval` builds in threads (`hypenet.eval.niah.build_niah_grid`); this times the same grid per number of
threads, without the cache, with the tokenizer of a teacher and the haystacks `hypenet eval` would use:

    python scripts/niah_build_time.py TEACHER [--haystack .carry/c/corpus.jsonl.xz --haystack-heldout]
        [--niah-lengths 4096,...,65536] [--niah-samples 2] [--workers 1,2,8]

Options not listed keep `hypenet eval`'s defaults (tasks, depths, seed).
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoTokenizer

    from hypenet.cli import build_parser
    from hypenet.eval.cli import _haystack_docs
    from hypenet.eval.niah import build_niah_grid
    from hypenet.teachers.load import checkpoint_location

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,8", help="numbers of threads to time, comma-separated")
    own, rest = parser.parse_known_args(argv)
    args = build_parser().parse_args(["eval", *rest])
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_location(args.model))
    docs = _haystack_docs(args, tokenizer)
    grids = {}
    print("| threads | seconds | prompts |\n|---|---|---|")
    for workers in (int(w) for w in own.workers.split(",")):
        started = time.perf_counter()
        grids[workers] = build_niah_grid(tokenizer, args.tasks, args.niah_lengths, args.niah_depths, args.niah_samples,
                                         args.seed, docs, args.chat_template, cache_dir=None, workers=workers)
        print(f"| {workers} | {time.perf_counter() - started:.1f} | {len(grids[workers])} |", flush=True)
    first = next(iter(grids.values()))
    if any(grid != first for grid in grids.values()):
        sys.exit("the grids differ between numbers of threads")
    print("the same prompts for every number of threads")


if __name__ == "__main__":
    main()
