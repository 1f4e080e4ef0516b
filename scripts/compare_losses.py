"""Where two runs' per-step losses first differ: `python compare_losses.py RUNS A,B [C,D ...] [--stage stage1]` reads
RUNS/NAME/stages/STAGE/losses.jsonl (STAGE: stage2 unless given; written by `hypenet stage1/2/3`) of each named pair
and prints a markdown table: the steps both logged, the first step whose loss differs at all, the largest difference,
and each run's median step time (what `deterministic: true` costs). `--stage select` compares the layer choices
instead (RUNS/NAME/stages/select/done.json): the attention layers, and the largest difference of any per-layer
score, recall or commonsense value. Made for the determinism leases (results/gpu_convert/determinism/)."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def steps(runs: Path, name: str, stage: str = "stage2") -> dict[int, dict]:
    path = runs / name / "stages" / stage / "losses.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return {row["step"]: row for row in rows if "loss" in row}  # (a resumed run logs its step again: the last wins)


def losses_table(runs: Path, pairs: list[str], stage: str = "stage2") -> list[str]:
    lines = ["| pair | steps in both | first step that differs | largest difference of the loss | "
             "median step time (s) |", "|---|---|---|---|---|"]
    for pair in pairs:
        a, b = pair.split(",")
        x, y = steps(runs, a, stage), steps(runs, b, stage)
        both = sorted(set(x) & set(y))
        differ = [s for s in both if x[s]["loss"] != y[s]["loss"]]
        biggest = max((abs(x[s]["loss"] - y[s]["loss"]) for s in both), default=float("nan"))
        times = " / ".join(f"{statistics.median(r['seconds'] for r in z.values()):.3f}" if z else "-" for z in (x, y))
        first = differ[0] if differ else "none" if both else "-"  # (no step in both: nothing compared)
        lines.append(f"| {a} vs {b} | {len(both)} | {first} | {biggest:.3g} | {times} |")
    return lines


def selection_table(runs: Path, pairs: list[str]) -> list[str]:
    lines = ["| pair | attention layers | same layers | largest difference of a score, recall or commonsense value |",
             "|---|---|---|---|"]
    for pair in pairs:
        a, b = pair.split(",")
        x, y = (json.loads(p.read_text()) if p.is_file() else None
                for p in (runs / name / "stages" / "select" / "done.json" for name in (a, b)))
        if x is None or y is None:
            lines.append(f"| {a} vs {b} | - | - | - |")
            continue
        gaps = [abs(x[key][layer] - y[key][layer]) for key in ("scores", "recall", "commonsense")
                for layer in set(x.get(key, {})) & set(y.get(key, {}))]
        same = "yes" if x["attention_layers"] == y["attention_layers"] else "no"
        layers = " / ".join(",".join(map(str, z["attention_layers"])) for z in (x, y))
        lines.append(f"| {a} vs {b} | {layers} | {same} | {max(gaps, default=float('nan')):.3g} |")
    return lines


def main(runs: Path, pairs: list[str], stage: str = "stage2") -> None:
    lines = selection_table(runs, pairs) if stage == "select" else losses_table(runs, pairs, stage)
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split(":")[0])
    parser.add_argument("runs", type=Path, help="the folder that holds the runs")
    parser.add_argument("pairs", nargs="+", help="pairs of run names, e.g. det-1,det-2")
    parser.add_argument("--stage", default="stage2", help="stage1, stage2, stage3, or select (default stage2)")
    args = parser.parse_args()
    bad = [p for p in args.pairs if p.count(",") != 1]
    if bad:
        parser.error(f"pairs are two run names joined by a comma, e.g. det-1,det-2; got {', '.join(bad)}")
    main(args.runs, args.pairs, args.stage)
