"""One student's logit-scaling bases side by side: what the export measured at each (its long-context loss, the
far-copy loss of `export.copy_probe`, the loss per position band) beside the NIAH answers each base got right, from
`hypenet eval --logit-scaling-base A --evals niah` grids of the same student. Does a loss rank the bases as
retrieval does?

    python scripts/bases_table.py RUN/report.json GRID/results.json [GRID ...] [--out table.md]

RUN/report.json is the conversion's report (or the checkpoint's halo_export.json); each GRID is an eval output folder
or its results.json. Each grid counts as the base its model ran with (`footprint` in results.json; a grid evaluated
at the export's own base, without --logit-scaling-base, as that base). For
each NIAH length, the table gives the answers right of those asked per base, and below it Spearman's rank correlation
over the bases that have both between each loss and the answers right (negative: the lower loss, the more right);
with fewer than three such bases there is none.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from hypenet.halo.export import scaling_label  # noqa: E402
from hypenet.units import length_label  # noqa: E402


def read_export(path: Path) -> dict:
    data = json.loads(path.read_text())
    export = data.get("export", data)  # report.json holds it under "export"; halo_export.json is it
    if not export.get("losses"):
        raise SystemExit(f"{path} has no export losses: give the conversion's report.json or its halo_export.json")
    return export


def read_grid(path: Path, export_base: float | None) -> tuple[str, dict[int, tuple[int, int]]]:
    """(base label, {length: (answers right, asked)}) of one NIAH evaluation."""
    path = path / "results.json" if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"no {path}: give the folder (or results.json) of a `hypenet eval --evals niah` run")
    results = json.loads(path.read_text())
    if not results.get("niah"):
        raise SystemExit(f"{path} has no NIAH results")
    # the base the model ran with (footprint), else the one asked for (settings); "off" is no scaling, None the
    # export's own
    base = results.get("footprint", {}).get("logit_scaling_base", results.get("settings", {}).get("logit_scaling_base"))
    base = export_base if base is None else None if base == "off" else float(base)
    counts: dict[int, list[int]] = {}
    for task in results["niah"]["tasks"].values():
        for length, cell in task["by_length"].items():
            right, asked = counts.setdefault(int(length), [0, 0])
            counts[int(length)] = [right + round(cell["accuracy"] * cell["samples"]), asked + cell["samples"]]
    return scaling_label(base), {length: (right, asked) for length, (right, asked) in sorted(counts.items())}


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return result


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on the ranks); None with fewer than 3 pairs or a constant side."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs pairs; got {len(x)} and {len(y)} values")
    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / (sxx * syy) ** 0.5


def table(export: dict, grids: dict[str, dict[int, tuple[int, int]]]) -> str:
    losses = {"long-context loss": export["losses"]}
    if export.get("copy_losses"):
        losses["far-copy loss"] = export["copy_losses"]
    losses.update(export.get("losses_by_band") or {})
    lengths = sorted({length for grid in grids.values() for length in grid})
    bases = [b for b in export["losses"] if b in grids] + [b for b in grids if b not in export["losses"]]
    chosen = scaling_label(export.get("logit_scaling_base"))
    head = ["a", *losses, *(f"NIAH {length_label(n)}" for n in lengths)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for base in bases:
        cells = [f"{base} (export's)" if base == chosen else base]
        cells += [f"{column[base]:.6g}" if base in column else "-" for column in losses.values()]
        cells += [f"{grids[base][n][0]} / {grids[base][n][1]}" if n in grids[base] else "-" for n in lengths]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Spearman's rank correlation between each loss and the NIAH answers right, over the bases with both "
              "(negative: the lower the loss, the more right):", "",
              "| loss | " + " | ".join(length_label(n) for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for name, column in losses.items():
        cells = []
        for n in lengths:
            paired = [b for b in bases if b in column and n in grids.get(b, {})]
            rho = spearman([column[b] for b in paired], [grids[b][n][0] for b in paired])
            cells.append("-" if rho is None else f"{rho:+.2f} ({len(paired)} bases)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the conversion's report.json, or the checkpoint's halo_export.json")
    parser.add_argument("grids", type=Path, nargs="+", help="NIAH eval outputs of that student at other bases")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    export = read_export(args.report)
    grids: dict[str, dict[int, tuple[int, int]]] = {}
    for path in args.grids:
        base, counts = read_grid(path, export.get("logit_scaling_base"))
        for length, cell in counts.items():
            if length in grids.get(base, {}):
                raise SystemExit(f"two grids of base {base} at {length_label(length)} ({path}): merge them first "
                                 "(`hypenet merge-evals`) or give one")
            grids.setdefault(base, {})[length] = cell
    text = table(export, grids)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
