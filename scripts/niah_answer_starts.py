"""How NIAH answers begin: per run and task, the share that starts with a line break, beside the accuracy, the
misses that are the needle's value with one character left out, and for number needles how many answers begin with
the digit 1.

A student distilled on hard-wrapped text may break the line where the answer should begin and go on with the
haystack's prose instead of the needle's value (results/gpu_convert/README.md, "Tenth lease"). This reads the
`niah_samples.jsonl` that `hypenet eval` writes next to its results and prints a markdown table:

    python scripts/niah_answer_starts.py results/gpu_convert/*/eval/*/niah_samples.jsonl [--lengths 4096,8192]
        [--out table.md]

An answer starts with a line break when its first character other than a space or tab is a newline. A miss drops one
character when its first word (without a leading colon and trailing punctuation) is the value less one of its
characters, e.g. 664827 for 6648274: the needle found, its copy one token short (results/gpu_convert/README.md,
"Twelfth lease").
For a task whose values are numbers, "first digit 1" counts the answers whose first digit is 1 beside the values
whose first digit is 1: a student that has lost the needle writes a short number that mostly begins with 1 (" 12.",
" 10."), so the first count outgrows the second as NIAH-Single-1 falls (results/gpu_convert/README.md,
"Twenty-third lease").
A miss restates the prompt when it begins with "the special magic": the student writes the prompt's answer prefix
("The special magic number for KEY mentioned in the provided text is") again instead of the value
(results/gpu_convert/README.md, "Thirty-second lease").
A miss breaks the line after a colon when it begins with ":" and a line break (":\n\nSUNYMAGIC_NUMBER"): the student
ends the prompt's sentence and starts a new block instead of writing the value (results/gpu_convert/README.md,
"Thirty-seventh lease").
A miss begins the value when its first word begins with the value's first two characters (" 7152." for 7152935,
" 607." for 6061680; by chance about 1 in 100 for a number): the needle found, its copy stopped or gone astray. A
miss cites a reference when its first word is two numbers joined by a colon (" 11:25", " 1:17"), the
chapter-and-verse numbering of a Bible haystack, taken instead of the needle's value (results/gpu_convert/
default_pooled/README.md). A miss writes a short number when the value is a number and the answer's first word is a
number at least two digits shorter (" 1.", " 12345." for a 7-digit value): a number made up, not copied
(results/gpu_convert/README.md, "Forty-fourth lease").
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from hypenet import files  # noqa: E402


def starts_with_line_break(output: str) -> bool:
    return output.lstrip(" \t")[:1] in ("\n", "\r")


def drops_one_character(output: str, value: str) -> bool:
    """Whether the answer's first word is `value` with exactly one of its characters left out."""
    words = output.strip().lstrip(":").split()
    first = words[0].rstrip(".,;:!?\"'") if words else ""
    return len(first) == len(value) - 1 and any(value[:i] + value[i + 1:] == first for i in range(len(value)))


def restates_prompt(output: str) -> bool:
    """Whether the answer begins by writing the prompt's answer prefix ("the special magic ...") again."""
    return output.strip().lower().startswith("the special magic")


def breaks_after_colon(output: str) -> bool:
    """Whether the answer is a colon and then a line break, spaces and tabs aside (":\n\nVEGAR")."""
    rest = output.lstrip(" \t")
    return rest[:1] == ":" and starts_with_line_break(rest[1:])


def _first_word(output: str) -> str:
    words = output.strip().lstrip(":").split()
    return words[0].rstrip(".,;!?\"'") if words else ""


def begins_value(output: str, value: str) -> bool:
    """Whether the answer's first word begins with the value's first two characters."""
    return len(value) >= 3 and _first_word(output).startswith(value[:2])


def cites_reference(output: str) -> bool:
    """Whether the answer's first word is two numbers joined by a colon (" 11:25", " 1:17:")."""
    return re.match(r"[0-9]+:[0-9]+", _first_word(output)) is not None


def writes_short_number(output: str, value: str) -> bool:
    """Whether `value` is a number and the answer's first word a number at least two digits shorter."""
    first = _first_word(output).rstrip(":")
    return value.isdigit() and first.isdigit() and len(first) <= len(value) - 2


def first_digit(text: str) -> str | None:
    found = re.search(r"[0-9]", text)
    return found.group() if found else None


def answer_starts(rows: list[dict]) -> dict[str, dict[str, int]]:
    """Per task: answers, right answers, answers starting with a line break, right answers among the others, misses
    that drop one character of the value, misses that restate the prompt, misses that break the line after a colon,
    misses that begin the value, misses that cite a reference, misses that write a short number, answers and values
    whose first digit is 1, and values that are numbers."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {
        "answers": 0, "right": 0, "line_break": 0, "right_without_line_break": 0, "dropped_one": 0,
        "restated": 0, "colon_break": 0, "began_value": 0, "reference": 0, "short_number": 0, "first_digit_1": 0,
        "values_first_digit_1": 0, "number_values": 0})
    for row in rows:
        c = counts[row["task"]]
        broke = starts_with_line_break(row["output"])
        c["answers"] += 1
        c["right"] += bool(row["correct"])
        c["line_break"] += broke
        c["right_without_line_break"] += bool(row["correct"]) and not broke
        value = str(row.get("value", ""))
        c["dropped_one"] += not row["correct"] and drops_one_character(row["output"], value)
        c["restated"] += not row["correct"] and restates_prompt(row["output"])
        c["colon_break"] += not row["correct"] and breaks_after_colon(row["output"])
        c["began_value"] += not row["correct"] and begins_value(row["output"], value)
        c["reference"] += not row["correct"] and cites_reference(row["output"])
        c["short_number"] += not row["correct"] and writes_short_number(row["output"], value)
        c["first_digit_1"] += first_digit(row["output"]) == "1"
        c["values_first_digit_1"] += first_digit(value) == "1"
        c["number_values"] += value.isdigit()
    return dict(sorted(counts.items()))


def run_label(path: Path) -> str:
    """results/gpu_convert/RUN/eval/LABEL/niah_samples.jsonl -> RUN/LABEL (the two folders that name a run);
    RUN/eval_OTHER/LABEL/niah_samples.jsonl (another evaluation of the run) -> RUN/eval_OTHER/LABEL; a lease's returns
    as they came back, RUN/LEASE/results/EVAL/LABEL/niah_samples.jsonl -> RUN/LEASE/EVAL/LABEL; a grid at one
    logit-scaling base, LEASE/bases/BASE/niah_samples.jsonl -> LEASE/BASE."""
    parts = path.parent.parts
    if len(parts) >= 5 and parts[-3] == "results" and parts[-2].startswith("eval"):
        return "/".join((*parts[-5:-3], *parts[-2:]))
    if len(parts) >= 3 and parts[-2] == "eval":
        return f"{parts[-3]}/{parts[-1]}"
    if len(parts) >= 3 and parts[-2].startswith("eval"):
        return "/".join(parts[-3:])
    if len(parts) >= 3 and parts[-2] == "bases":
        return f"{parts[-3]}/{parts[-1]}"
    return parts[-1]


def table(paths: list[Path], lengths: set[int] | None = None) -> str:
    """The markdown table of `answer_starts` for each file's rows (only those of context lengths in `lengths`)."""
    lines = ["| run | task | answers | right | start with a line break | right among the others | misses one character "
             "short | misses restating the prompt | misses breaking the line after a colon | misses beginning the "
             "value | misses citing a reference | misses writing a short number | first digit 1: answers / values |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        rows = [json.loads(line) for line in files.read_text(path).splitlines() if line.strip()]
        rows = [r for r in rows if lengths is None or int(r["context_len"]) in lengths]
        for task, c in answer_starts(rows).items():
            others = c["answers"] - c["line_break"]
            lines.append(f"| {run_label(path)} | {task} | {c['answers']} | {100 * c['right'] / c['answers']:.0f}% | "
                         f"{100 * c['line_break'] / c['answers']:.0f}% | {c['right_without_line_break']} / {others} | "
                         f"{c['dropped_one']} / {c['answers'] - c['right']} | {c['restated']} | {c['colon_break']} | "
                         f"{c['began_value']} | {c['reference']} | {c['short_number']} | {_first_digits(c)} |")
    return "\n".join(lines) + "\n"


def _first_digits(c: dict[str, int]) -> str:
    """Answers / values whose first digit is 1, for a task whose values are all numbers."""
    if c["number_values"] < c["answers"]:
        return "-"
    return f"{c['first_digit_1']} / {c['values_first_digit_1']}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="niah_samples.jsonl files written by `hypenet eval`")
    parser.add_argument("--lengths", help="only these context lengths, e.g. 4096,8192 (default: all)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.files if files.find(f) is None]
    if missing:
        parser.error(f"no such file: {', '.join(missing)} (hypenet eval writes niah_samples.jsonl beside results.json)")
    try:
        lengths = {int(n) for n in args.lengths.split(",")} if args.lengths else None
    except ValueError:
        parser.error(f"--lengths takes token counts separated by commas, e.g. 4096,8192; got {args.lengths!r}")
    text = table(args.files, lengths)
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
