"""Where two runs' per-step losses first differ: `python compare_losses.py RUNS A,B [C,D ...] [--stage stage1]` reads
RUNS/NAME/stages/STAGE/losses.jsonl (STAGE: stage2 unless given; written by `hypenet stage1/2/3`) of each named pair
and prints a markdown table: the steps both logged, the first step whose loss differs at all, the largest difference,
and each run's median step time (what `deterministic: true` costs). `--stage select` compares the layer choices
instead (RUNS/NAME/stages/select/done.json): the attention layers, and the largest difference of any per-layer
score, recall or commonsense value. Made for the determinism leases (results/gpu_convert/determinism/). `--plot
PNG` also draws every named run's loss of that stage, each point the mean of the `--window` logged steps ending there
(for runs that differ by a recipe, where the table's first differing step says little).

`python compare_losses.py --reports A/report.json,B/report.json` compares two whole conversions by their
report.json instead (what a lease brings back): each stage's logged losses (a report keeps a long stage's every
few steps, e.g. stage 2's 1,607 as every ninth: compare losses.jsonl for every step), the layer choice, the export's
long-context loss at each logit-scaling base and the base it chose, and the machines each ran on (a deterministic
run repeats on the same kind of GPU only)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from hypenet import files  # noqa: E402
from hypenet.halo.export import scaling_label  # noqa: E402

# why two runs' machines matter (docs/TRAINING.md, "Determinism")
NOT_ACROSS = ("`deterministic: true` repeats a run on the same kind of GPU and torch, not across kinds, so the "
              "results may differ for that alone.")


def steps(runs: Path, name: str, stage: str = "stage2") -> dict[int, dict]:
    path = runs / name / "stages" / stage / "losses.jsonl"
    rows = [json.loads(line) for line in files.read_text(path).splitlines()] if files.find(path) else []
    return {row["step"]: row for row in rows if "loss" in row}  # (a resumed run logs its step again: the last wins)


def number_first(key) -> tuple:
    """Steps and bases ("500", "2000", "off") in numeric order, names after them."""
    try:
        return 0, float(key), ""
    except ValueError:
        return 1, 0.0, str(key)


def differences(x: dict, y: dict) -> tuple[int, object, float]:
    """Keys in both, the first key whose value differs at all ("none"; "-" when none in both), the largest gap."""
    both = sorted(set(x) & set(y), key=number_first)
    differ = [k for k in both if x[k] != y[k]]
    biggest = max((abs(x[k] - y[k]) for k in both), default=float("nan"))
    return len(both), differ[0] if differ else "none" if both else "-", biggest


def losses_table(runs: Path, pairs: list[str], stage: str = "stage2") -> list[str]:
    lines = ["| pair | steps in both | first step that differs | largest difference of the loss | "
             "median step time (s) |", "|---|---|---|---|---|"]
    for pair in pairs:
        a, b = pair.split(",")
        x, y = steps(runs, a, stage), steps(runs, b, stage)
        both, first, biggest = differences(*({s: row["loss"] for s, row in z.items()} for z in (x, y)))
        times = " / ".join(f"{statistics.median(r['seconds'] for r in z.values()):.3f}" if z else "-" for z in (x, y))
        lines.append(f"| {a} vs {b} | {both} | {first} | {biggest:.3g} | {times} |")
    return lines + machine_notes(runs, pairs, stage)


def stage_machines(runs: Path, name: str, stage: str) -> list[str]:
    """The machines that ran one run's stage: its done.json's `machines`, or an unfinished stage's wall_time.json's
    (empty for runs before they were recorded)."""
    for file in ("done.json", "wall_time.json"):
        path = runs / name / "stages" / stage / file
        if path.is_file():
            return json.loads(path.read_text()).get("machines", [])
    return []


def machine_notes(runs: Path, pairs: list[str], stage: str) -> list[str]:
    """A line for each pair whose stage ran on other machines: where a deterministic run does not repeat."""
    notes = []
    for pair in pairs:
        a, b = pair.split(",")
        x, y = (stage_machines(runs, name, stage) for name in (a, b))
        if x and y and set(x) != set(y):
            notes.append(f"{a} vs {b}: other machines ({' and '.join(x)} / {' and '.join(y)}). {NOT_ACROSS}")
    return ["", *notes] if notes else []


def selection_table(runs: Path, pairs: list[str]) -> list[str]:
    lines = ["| pair | attention layers | same layers | largest difference of a score, recall or commonsense value |",
             "|---|---|---|---|"]
    for pair in pairs:
        a, b = pair.split(",")
        x, y = (json.loads(p.read_text()) if p.is_file() else None
                for p in (runs / name / "stages" / "select" / "done.json" for name in (a, b)))
        lines.append(f"| {a} vs {b} | {selection_cells(x, y)} |")
    return lines + machine_notes(runs, pairs, "select")


def selection_cells(x: dict | None, y: dict | None) -> str:
    """Two layer choices: their attention layers, whether they agree, the largest gap of a per-layer value."""
    if x is None or y is None:
        return "- | - | -"
    gaps = [abs(x[key][layer] - y[key][layer]) for key in ("scores", "recall", "commonsense")  # null: manual layers
            for layer in set(x.get(key) or {}) & set(y.get(key) or {})]
    same = "yes" if x["attention_layers"] == y["attention_layers"] else "no"
    layers = " / ".join(",".join(map(str, z["attention_layers"])) for z in (x, y))
    return f"{layers} | {same} | {max(gaps, default=float('nan')):.3g}"


def base_label(export: dict) -> str:
    return scaling_label(export["logit_scaling_base"]) if "logit_scaling_base" in export else "-"


def machines(report: dict) -> list[str]:
    """The machines a conversion ran on (its stages', layer selection's and export's `machines`), each once; empty
    for reports written before they were recorded."""
    parts = [*report.get("stages", {}).values(), report.get("selection") or {}, report.get("export") or {}]
    return list(dict.fromkeys(machine for part in parts for machine in part.get("machines", [])))


def reports_table(a: Path, b: Path) -> list[str]:
    """Two conversions compared by their report.json: stages' logged losses, layer choice, export; and the machines
    they ran on, with a warning where those differ."""
    x, y = (json.loads(p.read_text()) for p in (a, b))
    lines = ["| stage | logged steps in both | first step that differs | largest difference of the loss | "
             "wall time (s) |", "|---|---|---|---|---|"]
    for stage in sorted(set(x.get("stages", {})) | set(y.get("stages", {}))):
        runs = [z.get("stages", {}).get(stage, {}) for z in (x, y)]
        both, first, biggest = differences(*({step: loss for step, loss in r.get("losses", [])} for r in runs))
        times = " / ".join(f"{r['wall_time_s']:.0f}" if "wall_time_s" in r else "-" for r in runs)
        lines.append(f"| {stage} | {both} | {first} | {biggest:.3g} | {times} |")
    mx, my = machines(x), machines(y)
    lines += ["", "A report logs an evenly spaced part of a long stage's steps; the stages' losses.jsonl compare every "
              "step (the runs and pairs arguments)."]
    lines += ["", f"Ran on: {' and '.join(mx) or 'not recorded'} / {' and '.join(my) or 'not recorded'}."]
    if mx and my and set(mx) != set(my):
        lines[-1] += f" Other machines. {NOT_ACROSS}"
    choices = selection_cells(x.get("selection"), y.get("selection"))
    lines += ["", "| layer choice | attention layers | same layers | largest difference of a score, recall or "
              "commonsense value |", "|---|---|---|---|", f"| select | {choices} |"]
    ex, ey = (z.get("export") or {} for z in (x, y))
    both, first, biggest = differences(ex.get("losses", {}), ey.get("losses", {}))
    chosen = " / ".join(base_label(e) for e in (ex, ey))
    lines += ["", "| export | bases in both | first base whose loss differs | largest difference of the loss | "
              "base chosen |", "|---|---|---|---|---|", f"| export | {both} | {first} | {biggest:.3g} | {chosen} |"]
    return lines


def smoothed(rows: dict[int, dict], window: int) -> tuple[list[int], list[float]]:
    """A run's logged steps in order, and at each the mean loss of the `window` logged steps ending there (of fewer
    at the start)."""
    order = sorted(rows)
    losses = [rows[step]["loss"] for step in order]
    means = [statistics.fmean(losses[max(0, i + 1 - window):i + 1]) for i in range(len(losses))]
    return order, means


def plot_losses(runs: Path, pairs: list[str], stage: str, out: Path, window: int) -> Path:
    """Every run named in `pairs`, once, as its smoothed loss against the step (log scale), into the PNG `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hypenet.eval.plots import save_figure

    curves = {name: steps(runs, name, stage) for name in dict.fromkeys(n for pair in pairs for n in pair.split(","))}
    for name, rows in curves.items():
        if not rows:
            raise SystemExit(f"{runs / name / 'stages' / stage / 'losses.jsonl'}: no losses to plot")
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rows in curves.items():
        ax.plot(*smoothed(rows, window), label=name, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{stage} loss (mean of {window} steps)" if window > 1 else f"{stage} loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, out, dpi=120)


def main(runs: Path, pairs: list[str], stage: str = "stage2", plot: Path | None = None, window: int = 20) -> None:
    lines = selection_table(runs, pairs) if stage == "select" else losses_table(runs, pairs, stage)
    print("\n".join(lines))
    if plot is not None:
        print(f"\nplot: {plot_losses(runs, pairs, stage, plot, window)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split(":")[0])
    parser.add_argument("runs", type=Path, nargs="?", help="the folder that holds the runs")
    parser.add_argument("pairs", nargs="*", help="pairs of run names, e.g. det-1,det-2")
    parser.add_argument("--stage", default="stage2", help="stage1, stage2, stage3, or select (default stage2)")
    parser.add_argument("--reports", help="two conversions' report.json joined by a comma: compare them whole")
    parser.add_argument("--plot", type=Path, help="also draw the named runs' losses of the stage into this PNG")
    parser.add_argument("--window", type=int, default=20, help="--plot: steps averaged into each point (default 20)")
    args = parser.parse_args()
    if args.reports:
        paths = [Path(p) for p in args.reports.split(",")]
        if len(paths) != 2 or args.runs or args.pairs:
            parser.error("--reports takes two report.json joined by a comma, and no RUNS or pairs")
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            parser.error(f"no such report: {', '.join(missing)} (a conversion writes OUT/report.json)")
        print("\n".join(reports_table(*paths)))
        raise SystemExit(0)
    if args.runs is None or not args.pairs:
        parser.error("give RUNS and at least one pair of run names (or --reports A,B)")
    bad = [p for p in args.pairs if p.count(",") != 1]
    if bad:
        parser.error(f"pairs are two run names joined by a comma, e.g. det-1,det-2; got {', '.join(bad)}")
    if args.plot is not None and (args.stage == "select" or args.window < 1):
        parser.error("--plot draws a training stage's losses (--stage stage1, stage2 or stage3), --window 1 or more")
    main(args.runs, args.pairs, args.stage, args.plot, args.window)
