"""Loss spikes in a conversion's training stages, read from the `report.json` that `hypenet convert` writes.

Stage 2 of the thirty-second lease's student jumped from a KL of ~1.0 to 5.5 for a few steps and stayed above a run
of the same seed on the same documents to its end (results/gpu_convert/README.md, "Thirty-second lease"). This lists,
for each report, the logged points of a stage whose loss is more than `--factor` times the logged point before:

    python scripts/loss_spikes.py results/gpu_convert/*/convert_*/report.json [--stage stage2] [--factor 1.8]
        [--out table.md]

The report logs a stage's loss every few optimizer steps (`stages.STAGE.losses`: [step, loss] pairs), so a spike
shorter than that interval can fall between two points and a spike is seen at the points that land on it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def spikes(losses: list[list[float]], factor: float) -> list[tuple[int, float, float]]:
    """(step, loss at the point before, loss) for each logged point more than `factor` times the point before."""
    return [(int(step), before, loss) for (_, before), (step, loss) in zip(losses, losses[1:])
            if before > 0 and loss > factor * before]


def table(files: list[Path], stage: str, factor: float) -> str:
    lines = [f"| report | {stage} tokens | logged points | points over {factor:g}x the one before (step: before -> "
             "after) |", "|---|---|---|---|"]
    for path in files:
        found = json.loads(path.read_text()).get("stages", {}).get(stage)
        if not found or not found.get("losses"):
            continue
        found_spikes = spikes(found["losses"], factor)
        jumps = ", ".join(f"{step}: {before:.3g} -> {loss:.3g}" for step, before, loss in found_spikes)
        lines.append(f"| {path.parent} | {found['tokens']:,} | {len(found['losses'])} | {jumps or 'none'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="report.json files written by `hypenet convert`")
    parser.add_argument("--stage", default="stage2", help="the stage whose losses to read (default: stage2)")
    parser.add_argument("--factor", type=float, default=1.8,
                        help="a point counts when its loss is more than this times the point before (default 1.8)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)} (hypenet convert writes report.json in its --out folder)")
    if args.factor <= 1:
        parser.error(f"--factor must be more than 1 (a spike is a rise), got {args.factor}")
    text = table(args.files, args.stage, args.factor)
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
