"""NIAH answers pooled over several runs of one recipe: per context length, each run's accuracy (all tasks' answers
together), their range, and the pooled accuracy with its 95% interval (Wilson score, over every answer of every run).

Two runs of one config and seed on the GPU can differ by 40 answers of 450 (results/gpu_convert/README.md,
"Thirty-sixth lease"), so one run says little about its recipe; the pooled accuracy is the recipe's estimate and the
range what one run of it may give. Reads the `niah_samples.jsonl` that `hypenet eval` writes (or `hypenet merge-evals`
merges) in each evaluation folder and prints a markdown table:

    python scripts/niah_pool.py EVAL_DIR EVAL_DIR ... [--labels a,b,...] [--tasks single_1,...] [--out table.md]

`--tasks` keeps those tasks' answers only (e.g. Single-1 alone, the task past the window depends on most).

The interval counts the needles' chance only, as if all answers came from one model; it is narrower than the
spread between runs when runs differ by more than their needles explain (compare the range).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from hypenet import files  # noqa: E402
from hypenet.eval.niah import accuracy_interval  # noqa: E402
from hypenet.units import length_label  # noqa: E402


def counts(folder: Path, tasks: list[str] | None = None) -> tuple[Counter, Counter]:
    """Answers right and answers asked per context length, all tasks (or those in `tasks`) together."""
    path = folder / "niah_samples.jsonl"
    if files.find(path) is None:
        raise SystemExit(f"no {path}: give evaluation folders of `hypenet eval --evals niah` (or merged ones)")
    right, asked, seen = Counter(), Counter(), set()
    for line in files.read_text(path).splitlines():
        row = json.loads(line)
        seen.add(row["task"])
        if tasks is not None and row["task"] not in tasks:
            continue
        asked[row["context_len"]] += 1
        right[row["context_len"]] += bool(row["correct"])
    missing = sorted(set(tasks or ()) - seen)
    if missing:
        raise SystemExit(f"{path} has no answers of {', '.join(missing)}; its tasks: {', '.join(sorted(seen))}")
    return right, asked


def pooled_table(folders: list[Path], labels: list[str], tasks: list[str] | None = None) -> str:
    runs = [counts(folder, tasks) for folder in folders]
    lengths = sorted(set.intersection(*(set(asked) for _, asked in runs)))
    if not lengths:
        raise SystemExit("the runs share no context length: nothing to pool")
    lines = [f"| length | {' | '.join(labels)} | range | pooled (95% interval) | answers |",
             "|---|" + "---|" * (len(labels) + 3)]

    def row(name: str, picks: list[tuple[int, int]]) -> str:
        shares = [r / a for r, a in picks]
        right, asked = sum(r for r, _ in picks), sum(a for _, a in picks)
        low, high = accuracy_interval(right / asked, asked)
        cells = " | ".join(f"{100 * s:.1f}" for s in shares)
        return (f"| {name} | {cells} | {100 * min(shares):.1f}-{100 * max(shares):.1f} | "
                f"**{100 * right / asked:.1f}** ({100 * low:.0f}-{100 * high:.0f}) | {right} / {asked} |")

    for length in lengths:
        lines.append(row(length_label(length), [(right[length], asked[length]) for right, asked in runs]))
    totals = [(sum(right[n] for n in lengths), sum(asked[n] for n in lengths)) for right, asked in runs]
    lines.append(row("all", totals))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="evaluation folders with niah_samples.jsonl")
    parser.add_argument("--labels", help="comma-separated names of the runs (default: the folders)")
    parser.add_argument("--tasks", help="comma-separated NIAH tasks to count (default: all), e.g. single_1")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    labels = args.labels.split(",") if args.labels else [str(folder) for folder in args.folders]
    if len(labels) != len(args.folders):
        parser.error(f"{len(labels)} labels for {len(args.folders)} folders: give one label per folder")
    text = pooled_table(args.folders, labels, args.tasks.split(",") if args.tasks else None)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
