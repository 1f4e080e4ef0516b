"""How far `hypenet convert --plan`'s time estimates are from conversions that ran: `python scripts/plan_check.py
REPORT.json... [--teacher embedded] [--out results/plan_check/plan_check.json]`.

For each conversion report (written by `hypenet convert`, e.g. the GPU runs under results/gpu_convert/), the plan
is made again from the report's own config (teacher, budgets, batch shapes, compile) and each trained stage's
estimate is set beside the wall time the stage recorded. The recorded times include what the estimate leaves out
(loading, the first step's compilation, checkpoints, a resume across device calls), so a ratio above 1 is expected.
Prints a markdown table and the median ratio per stage; with --out also writes the rows as JSON and the table as .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from hypenet.halo.config import from_dict  # noqa: E402
from hypenet.halo.plan import TRAINED, make_plan  # noqa: E402


def check(report_path: Path, scratch: Path, teacher: str | None = None) -> dict:
    report = json.loads(report_path.read_text())
    if "config" not in report:
        raise ValueError(f"{report_path} records no config")
    config = from_dict(report["config"])
    config.teacher = teacher or config.teacher  # (a report from another machine names a path there)
    config.out = str(scratch / "never-written")  # the plan only reads --out; this one does not exist
    plan = make_plan(config)
    row = {"report": str(report_path), "compile": plan["compile"]}
    for stage in plan["stages"]:
        measured = (report["stages"].get(stage["stage"]) or {}).get("wall_time_s")
        estimate = stage["h200_hours"] * 3600
        row[stage["stage"]] = {"tokens": stage["tokens"], "estimate_s": round(estimate, 1), "measured_s": measured,
                               "ratio": round(measured / estimate, 3) if measured else None}
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| report | compile | " + " | ".join(f"{s} estimate / measured (s)" for s in TRAINED) + " |",
             "|---|---|" + "---|" * len(TRAINED)]
    for row in rows:
        cells = [f"{row[s]['estimate_s']:.0f} / {row[s]['measured_s']:.0f} ({row[s]['ratio']:.2f}x)"
                 if row[s]["measured_s"] else f"{row[s]['estimate_s']:.0f} / -" for s in TRAINED]
        lines.append(f"| {row['report']} | {row['compile']} | " + " | ".join(cells) + " |")
    medians = []
    for stage in TRAINED:
        ratios = [row[stage]["ratio"] for row in rows if row[stage]["ratio"]]
        medians.append(f"{stage} {statistics.median(ratios):.2f}x (of {len(ratios)})" if ratios else f"{stage} -")
    return "\n".join(lines) + "\n\nMedian measured / estimate: " + ", ".join(medians) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--teacher", help="the teacher to plan with instead of the one each report names (e.g. "
                        "embedded, for reports written on the GPU machine)")
    parser.add_argument("--out", type=Path, help="write the rows (JSON) and, beside it, the table (.md)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        rows = [check(path, Path(scratch), args.teacher) for path in args.reports]
    table = markdown(rows)
    print(table, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
