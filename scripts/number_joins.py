"""How often a made-up number of stages 2-3's data ends right before a digit of the text, so that the chunk holds a
longer number than the one written (docs/DATA.md, "Repeated numbers" and "Look-alike numbers"). Each made-up number
begins with a space, so nothing joins it from before; the token after it is the text's own.

    python scripts/number_joins.py --config configs/gpu-smollm2.yaml [--set KEY=VALUE ...] [--stage stage2]
        [--items N] [--out FILE.md]

It builds the stage's data as a conversion with that config does (teacher, corpus, seed; no training), serves its
first N stream items (default: all of the stage's), and counts, for the planted numbers, their copies and the
look-alikes, how many the text's next token continues with a digit. It writes a markdown table (stdout, or --out).
The tokenizer's digit tokens are those whose text begins with a digit (one token per digit in SmolLM2's)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

KINDS = ("number", "copy", "decoy")  # repeat_number's names for what it wrote


def digit_led(tokenizer) -> np.ndarray:
    """For each token id, whether its text begins with a digit: a token that continues a number before it."""
    return np.array([tokenizer.decode([i])[:1].isdigit() for i in range(len(tokenizer))], dtype=bool)


def count_joins(rows: Iterable[tuple[np.ndarray, list]], led: np.ndarray) -> dict:
    """Over (row, placed) pairs (placed as `repeat_number` fills it): per kind, the numbers written and those the
    row's next token continues with a digit; and the rows with a number, and with any number so joined."""
    counts = {kind: {"written": 0, "joined": 0} for kind in KINDS}
    rows_with, rows_joined = 0, 0
    for row, placed in rows:
        if not placed:
            continue
        rows_with += 1
        joined_here = False
        for kind, _, end in placed:
            joined = end < len(row) and bool(led[int(row[end])])
            counts[kind]["written"] += 1
            counts[kind]["joined"] += joined
            joined_here |= joined
        rows_joined += joined_here
    return {"kinds": counts, "rows": rows_with, "rows_joined": rows_joined}


def table(result: dict, title: str) -> str:
    def share(part: int, whole: int) -> str:
        return f"{part} of {whole} ({100 * part / whole:.1f}%)" if whole else "0 of 0"

    lines = [f"# {title}", "", "| written | followed by a digit of the text |", "|---|---|"]
    for kind in KINDS:
        c = result["kinds"][kind]
        lines.append(f"| {kind} | {share(c['joined'], c['written'])} |")
    lines.append(f"| chunks with a made-up number | {share(result['rows_joined'], result['rows'])} with one joined |")
    return "\n".join(lines) + "\n"


def stage_parser(description: str) -> argparse.ArgumentParser:
    """The options of a script that builds a stage's data as a conversion does (this one, teacher_copies.py)."""
    from hypenet.halo.config import PRESETS

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a conversion's preset, as convert's")
    parser.add_argument("--config", action="append", default=[], help="a conversion's YAML config (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--teacher", default=None, help="the teacher (default: the config's)")
    parser.add_argument("--data", default=None, help="the corpus (default: the config's)")
    parser.add_argument("--stage", default="stage2", choices=("stage2", "stage3"))
    parser.add_argument("--out", type=Path, default=None, help="the markdown table's file (default: stdout)")
    return parser


@contextlib.contextmanager
def stage_conversion(args: argparse.Namespace, overrides: list[str] = ()):
    """The config (with `overrides` after the options') and the Conversion that `stage_parser`'s options name, on the
    CPU, built in a temporary folder that nothing is written to; no stage is run."""
    from hypenet.halo.config import load_config
    from hypenet.halo.pipeline import Conversion

    with tempfile.TemporaryDirectory() as out:
        data_source = [] if args.data is None else [f"data.source={args.data}"]
        config = load_config(args.preset, files=args.config, teacher=args.teacher, out=out,
                             overrides=[*args.overrides, *data_source, "device=cpu", *overrides])
        yield config, lambda: Conversion(config)


def served_with_places(chunks, items: int):
    """(row, placed) for a PackedChunks' first `items` stream items, placed as `served` fills it (empty: no value)."""
    for item in range(items):
        placed: list = []
        row = chunks.served(item, placed=placed)
        yield row, placed


def write_table(text: str, out: Path | None) -> None:
    """A markdown table to stdout, or to the file `out`."""
    if out is None:
        print(text, end="")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=None, help="stream items to serve (default: the stage's)")
    args = parser.parse_args(argv)
    if args.items is not None and args.items <= 0:
        parser.error(f"--items is a count of stream items, 1 or more; got {args.items}")

    # (the numbers' items are the same without data.repeat_uuids, whose UUIDs this script does not count)
    with stage_conversion(args, ["data.repeat_uuids=0"]) as (config, build):
        if not config.data.repeat_numbers or not config.data.repeat_spans:
            parser.error("the config plants no made-up numbers: it needs data.repeat_spans and data.repeat_numbers")
        conversion = build()
        chunks = conversion.chunks(args.stage)
        stage = getattr(conversion.config, args.stage)
        items = args.items if args.items is not None else stage.steps() * stage.batch_size  # what it trains on

        result = count_joins(served_with_places(chunks, items), digit_led(conversion.tokenizer))
    data = config.data
    title = (f"Made-up numbers joined by the text's digits: {args.stage}'s first {items} items, seed {config.seed}, "
             f"repeat_spans {data.repeat_spans}, repeat_numbers {data.repeat_numbers}, number_decoys "
             f"{data.number_decoys}")
    write_table(table(result, title), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
