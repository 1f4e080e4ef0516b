"""What a multi-needle NIAH answer wrote in place of the asked value: another needle's value, another number of the
prompt, a near copy, or a number found nowhere in the prompt.

RULER's multi-key tasks put needles of other keys in the haystack (multikey_1: three among documents; multikey_2/3:
a haystack of nothing but needles). A model whose memory mixes keys should answer with a wrong needle's value; one
that has lost the needles altogether should make a number up. `niah_samples.jsonl` keeps each sample's output, key
and asked values but not its prompt, so this rebuilds the grid from the run's `results.json` settings (the same
prompts `hypenet eval` built: the seeds, the held-out haystack, the tokenizer), checks that every row's key, values
and token count match the rebuilt sample, and reads the prompt's needles:

    python scripts/niah_misses.py RUN_DIR [RUN_DIR ...] [--labels a,b] [--haystack FILE] [--tokenizer TEACHER]
        [--out table.md]

RUN_DIR holds `results.json` and `niah_samples.jsonl` (e.g. `extras/ruler_student`). `--haystack` replaces the
haystack path the run recorded (a GPU run's `.carry/c/corpus.jsonl.xz` is the file `python -m hypenet.data export`
writes), `--tokenizer` the teacher whose tokenizer built the prompts (default: the embedded teacher).

Each answer's first value-shaped word is put in the first class that holds it. For number tasks that is its first
run of digits; for UUID tasks (single_3, multikey_3) its first whole UUID, or where it holds none its first UUID-like
word (8 hex characters and any dash-joined hex groups after them: a copy stopped part-way, " 446df597-f662-488d.", or
a UUID made up with groups of the wrong length):
- asked: one of the asked values (for multiquery and multivalue, any of them);
- other needle: the value of a needle in the prompt that was not asked (a key mixed up);
- near asked / near other needle: within two edits of such a value, or its first three characters or more (a copy
  gone astray or stopped: " 7152." for 7152935);
- asked key / other key: a needle's key, the asked one (the question written back) or another (multikey_3's keys
  are UUIDs too);
- in the prompt: elsewhere in the prompt's text;
- made up: nowhere in the prompt;
- none: no value-shaped word at all.

A second table takes the tasks with needles of other keys (multikey_1/2/3) by where the asked needle lies: the
prompt's last needle (nearest the question) or not, and counts the answers that are the asked value, the last
needle's value (when that is not the asked one), another needle's value, or none of them: a model that takes the
nearest needle whatever its key answers right only when the asked one is last.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from hypenet import files  # noqa: E402

CLASSES = ("asked", "other needle", "near asked", "near other needle", "asked key", "other key",
           "in the prompt", "made up", "none")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
UUID_LIKE = r"(?<![0-9A-Za-z])[0-9a-f]{8}(?:-[0-9a-f]+)*(?![0-9A-Za-z])"


def value_pattern(task: str) -> str:
    """What a value of the task looks like in text: a UUID, or a run of digits."""
    from hypenet.eval.niah import get_task

    return UUID if get_task(task).value_kind == "uuid" else r"\d+"


def answer_word(output: str, task: str) -> str | None:
    """An answer's value-shaped word (see the module's docstring), or None where it has none."""
    match = re.search(value_pattern(task), output)
    if match is None and value_pattern(task) == UUID:
        match = re.search(UUID_LIKE, output)
    return match.group(0) if match else None


def needles_of(prompt: str, task: str) -> dict[str, str]:
    """Every needle sentence of a prompt, as {value: key}."""
    from hypenet.eval.niah import get_task

    noun = get_task(task).value_noun
    found = re.findall(rf"One of the special magic {noun}s for (.+?) is: ({value_pattern(task)})\.", prompt)
    return {value: key for key, value in found}


def within_two_edits(a: str, b: str) -> bool:
    """Levenshtein distance at most 2 (a copy with a digit dropped, added or changed, or two)."""
    if abs(len(a) - len(b)) > 2:
        return False
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1] <= 2


def near(word: str, value: str) -> bool:
    """A copy of `value` gone astray (within two edits) or stopped (its first three characters or more)."""
    return within_two_edits(word, value) or (len(word) >= 3 and value.startswith(word))


def classify(output: str, asked: list[str], asked_keys: list[str], prompt: str, task: str) -> str:
    """The class (CLASSES) of an answer's first value-shaped word."""
    word = answer_word(output, task)
    if word is None:
        return "none"
    needles = needles_of(prompt, task)
    others = [value for value in needles if value not in asked]
    if word in asked:
        return "asked"
    if word in others:
        return "other needle"
    if any(near(word, value) for value in asked):
        return "near asked"
    if any(near(word, value) for value in others):
        return "near other needle"
    if word in asked_keys:
        return "asked key"
    if word in needles.values():
        return "other key"
    edge = "[0-9a-f-]" if value_pattern(task) == UUID else r"\d"  # (a whole value, not a piece of a longer one)
    if re.search(rf"(?<!{edge}){re.escape(word)}(?!{edge})", prompt):
        return "in the prompt"
    return "made up"


def rebuilt_prompts(settings: dict, tokenizer, haystack: str | None) -> dict[tuple, object]:
    """A run's NIAH grid rebuilt from its `results.json` settings, by (task, length, depth, seed): its haystack read
    as `hypenet eval` read it, and its prompts built as `hypenet eval` built them."""
    from argparse import Namespace

    from hypenet.eval.cli import _haystack_docs
    from hypenet.eval.niah import build_niah_grid

    args = Namespace(**{**settings, "haystack": haystack or settings["haystack"], "no_progress": True})
    grid = build_niah_grid(tokenizer, args.tasks, args.niah_lengths, args.niah_depths, args.niah_samples, args.seed,
                           _haystack_docs(args, tokenizer), args.chat_template)
    return {(s.task, s.context_len, s.depth, s.seed): s for s in grid}


GRID_SETTINGS = ("tasks", "niah_lengths", "niah_depths", "niah_samples", "seed", "haystack", "haystack_heldout",
                 "ppl_heldout_fraction", "chat_template")


def read_run(run: Path, tokenizer, haystack: str | None = None, grids: dict | None = None) -> list[dict]:
    """The run's samples, each with its class; every row is checked against its rebuilt prompt. `grids` keeps the
    grids built so far, for runs that share one (a teacher and its student)."""
    from hypenet.eval.niah import answers_of

    settings = json.loads((run / "results.json").read_text())["settings"]
    grids = {} if grids is None else grids
    key = json.dumps({name: settings.get(name) for name in GRID_SETTINGS}, sort_keys=True)
    if key not in grids:
        grids[key] = rebuilt_prompts(settings, tokenizer, haystack)
    prompts = grids[key]
    rows = [json.loads(line) for line in files.read_text(run / "niah_samples.jsonl").splitlines() if line.strip()]
    for row in rows:
        sample = prompts.get((row["task"], row["context_len"], row["depth"], row["seed"]))
        if sample is None or (sample.key, sample.value, sample.n_tokens) != (row["key"], row["value"], row["n_tokens"]):
            raise SystemExit(f"{run}: the rebuilt prompt of {row['task']} at {row['context_len']} tokens (seed "
                             f"{row['seed']}) is not the run's: give the haystack file and the tokenizer the run used "
                             "(--haystack, --tokenizer)")
        asked = answers_of(sample)
        row["class"] = classify(row["output"], asked, sample.keys or [sample.key], sample.prompt, row["task"])
        values = list(needles_of(sample.prompt, row["task"]))  # (in the prompt's order)
        if any(value not in asked for value in values):  # needles of other keys: where the asked one lies
            word = answer_word(row["output"], row["task"])
            row["asked_last"] = values[-1] in asked
            row["wrote"] = ("asked" if word in asked else "last needle" if word == values[-1] else
                            "other needle" if word in values else "else")
    return rows


def table(runs: list[tuple[str, list[dict]]]) -> str:
    """Per model, task and length (and in all), how many answers fall in each class."""
    from hypenet.units import length_label

    lines = ["| model | task | length | prompts | " + " | ".join(CLASSES) + " |",
             "|---|---|---|---|" + "---|" * len(CLASSES)]
    for label, rows in runs:
        cells: dict[tuple, Counter] = {}
        for row in rows:
            for cell in ((row["task"], row["context_len"]), (row["task"], "all"), ("all", "all")):
                cells.setdefault(cell, Counter())[row["class"]] += 1
        order = sorted(cells, key=lambda cell: (cell[0] == "all", cell[0], cell[1] == "all",
                                                cell[1] if isinstance(cell[1], int) else 0))
        for task, length in order:
            counts = cells[task, length]
            name = length_label(length) if isinstance(length, int) else length
            total = sum(counts.values())
            bold = "**" if "all" in (task, length) else ""
            lines.append(f"| {label} | {bold}{task}{bold} | {bold}{name}{bold} | {total} | "
                         + " | ".join(str(counts[c]) for c in CLASSES) + " |")
    return "\n".join(lines)


RECENCY = ("asked", "last needle", "other needle", "else")


def recency_table(runs: list[tuple[str, list[dict]]]) -> str:
    """Per model and task with needles of other keys: the answers by whether the asked needle is the last."""
    lines = ["| model | task | asked needle | prompts | " + " | ".join(RECENCY) + " |",
             "|---|---|---|---|" + "---|" * len(RECENCY)]
    for label, rows in runs:
        cells: dict[tuple, Counter] = {}
        for row in rows:
            if "wrote" in row:
                cells.setdefault((row["task"], row["asked_last"]), Counter())[row["wrote"]] += 1
        for (task, last), counts in sorted(cells.items(), key=lambda c: (c[0][0], not c[0][1])):
            lines.append(f"| {label} | {task} | {'the last' if last else 'not the last'} | {sum(counts.values())} | "
                         + " | ".join(str(counts[c]) for c in RECENCY) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="eval folders holding results.json and niah_samples.jsonl")
    parser.add_argument("--labels", help="comma-separated names for the runs (default: the folder names)")
    parser.add_argument("--haystack", help="the haystack file the runs used, where its recorded path is elsewhere")
    parser.add_argument("--tokenizer", help="the teacher whose tokenizer built the prompts (default: embedded)")
    parser.add_argument("--out", type=Path, help="write the table here too")
    args = parser.parse_args()
    labels = args.labels.split(",") if args.labels else [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"--labels names {len(labels)} runs, {len(args.runs)} given")
    from hypenet.teachers.load import checkpoint_location, load_tokenizer

    tokenizer, grids = load_tokenizer(checkpoint_location(args.tokenizer)), {}
    runs = [(label, read_run(run, tokenizer, args.haystack, grids)) for label, run in zip(labels, args.runs)]
    text = (table(runs) + "\n\nEach answer's first value-shaped word, in the first class that holds it ("
            + ", ".join(CLASSES) + ").\n")
    if recency := recency_table(runs):  # (only where prompts hold needles of other keys)
        text += ("\n" + recency + "\n\nTasks with needles of other keys, by whether the asked needle is the prompt's "
                 "last (nearest the question): the answer's first value-shaped word is the asked value, the last "
                 "needle's, another needle's, or none of them.\n")
    text += "`scripts/niah_misses.py`.\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
