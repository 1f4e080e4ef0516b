"""Where two stage-2 runs' per-step losses first differ: `python compare_losses.py RUNS A,B [C,D ...]` reads
RUNS/NAME/stages/stage2/losses.jsonl (written by `hypenet stage2`) of each named pair and prints a markdown table:
the steps both logged, the first step whose loss differs at all, the largest difference, and each run's median
step time (what `deterministic: true` costs). Made for `results/gpu_convert/determinism/lease36.sh`."""

import json
import statistics
import sys
from pathlib import Path


def steps(runs: Path, name: str) -> dict[int, dict]:
    path = runs / name / "stages" / "stage2" / "losses.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return {row["step"]: row for row in rows if "loss" in row}  # (a resumed run logs its step again: the last wins)


def main(runs: Path, pairs: list[str]) -> None:
    print("| pair | steps in both | first step that differs | largest difference of the loss | median step time (s) |")
    print("|---|---|---|---|---|")
    for pair in pairs:
        a, b = pair.split(",")
        x, y = steps(runs, a), steps(runs, b)
        both = sorted(set(x) & set(y))
        differ = [s for s in both if x[s]["loss"] != y[s]["loss"]]
        biggest = max((abs(x[s]["loss"] - y[s]["loss"]) for s in both), default=float("nan"))
        times = " / ".join(f"{statistics.median(r['seconds'] for r in z.values()):.3f}" if z else "-" for z in (x, y))
        print(f"| {a} vs {b} | {len(both)} | {differ[0] if differ else 'none'} | {biggest:.3g} | {times} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
