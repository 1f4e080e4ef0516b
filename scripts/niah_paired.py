"""Two evaluations that asked the same NIAH prompts, compared answer by answer: per context length (and task), how
many prompts both answered right, only A, only B, neither, how many outputs are identical, and McNemar's exact test
on the prompts that split them. For one model at two settings (e.g. two logit-scaling bases) or one conversion
evaluated in two leases, where `hypenet compare`'s Fisher test, which treats the two sets of answers as unrelated,
is weaker.

    python scripts/niah_paired.py A/niah_samples.jsonl B/niah_samples.jsonl [--and A2/... B2/...] [--labels a,b]
        [--out table.md]

A prompt is the same when its task, length, depth, seed, key, value and token count are; B may hold prompts A lacks
(e.g. A is a 64K grid, B the 4K-64K one) and the other way round: only shared prompts are compared, and how many
were left out is printed. Shared prompts at no length: an error.

`--and A2 B2` (repeatable) adds more pairs of the same two settings, e.g. the same two bases on other students: each
pair gets its table, then one table pools them, counting every pair's prompts apart (one prompt asked in two pairs
is two prompts), with McNemar's exact test on the pooled split prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from hypenet import files  # noqa: E402
from hypenet.eval.niah import mcnemar_exact_p  # noqa: E402
from hypenet.units import length_label  # noqa: E402

PROMPT = ("task", "context_len", "depth", "seed", "key", "value", "n_tokens")


def answers(path: Path) -> dict[tuple, dict]:
    """The samples of one `niah_samples.jsonl`, by the prompt they answer."""
    if files.find(path) is None:
        raise SystemExit(f"no {path}: give the niah_samples.jsonl of `hypenet eval --evals niah` (or merge-evals)")
    rows = {}
    for line in files.read_text(path).splitlines():
        row = json.loads(line)
        prompt = tuple(row[k] for k in PROMPT)
        if prompt in rows:
            raise SystemExit(f"{path} answers one prompt twice ({dict(zip(PROMPT, prompt))}): not one evaluation")
        rows[prompt] = row
    return rows


def paired_table(a: dict[tuple, dict], b: dict[tuple, dict], labels: tuple[str, str]) -> tuple[str, int, int]:
    """(markdown table, prompts only in a, prompts only in b)."""
    shared = set(a) & set(b)
    if not shared:
        raise SystemExit("the two evaluations share no prompt: not the same grid (seed, haystack, lengths)")
    first, second = labels
    lines = [f"| length | task | prompts | both right | only {first} | only {second} | neither | {first} / {second} "
             "right | identical outputs | McNemar p |", "|---|---|---|---|---|---|---|---|---|---|"]

    def row(length: str, task: str, prompts: list[tuple]) -> str:
        right = [(a[p]["correct"], b[p]["correct"]) for p in prompts]
        both, neither = sum(x and y for x, y in right), sum(not x and not y for x, y in right)
        only_a, only_b = sum(x and not y for x, y in right), sum(y and not x for x, y in right)
        same = sum(a[p]["output"] == b[p]["output"] for p in prompts)
        return (f"| {length} | {task} | {len(prompts)} | {both} | {only_a} | {only_b} | {neither} | {both + only_a} / "
                f"{both + only_b} | {same} | {mcnemar_exact_p(only_a, only_b):.2g} |")

    lengths, tasks = sorted({p[1] for p in shared}), sorted({p[0] for p in shared})
    for length in lengths:
        at = [p for p in shared if p[1] == length]
        lines += [row(length_label(length), task, [p for p in at if p[0] == task]) for task in tasks
                  if any(p[0] == task for p in at)]
        lines.append(row(f"**{length_label(length)}**", "**all**", at))
    lines.append(row("**all**", "**all**", sorted(shared)))
    return "\n".join(lines) + "\n", len(set(a) - shared), len(set(b) - shared)


def pooled(pairs: list[tuple[dict[tuple, dict], dict[tuple, dict]]]) -> tuple[dict[tuple, dict], dict[tuple, dict]]:
    """The pairs' answers as one pair: each prompt tagged with its pair's index (after the fields `paired_table`
    reads by position), so that pairs that asked the same prompts count them apart."""
    return tuple({(*prompt, i): row for i, pair in enumerate(pairs) for prompt, row in pair[side].items()}
                 for side in (0, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="niah_samples.jsonl of the first evaluation")
    parser.add_argument("b", type=Path, help="niah_samples.jsonl of the second, same prompts")
    parser.add_argument("--and", dest="more", nargs=2, type=Path, action="append", default=[], metavar=("A2", "B2"),
                        help="another pair of the same two settings (repeatable); a pooled table follows")
    parser.add_argument("--labels", default="A,B", help="comma-separated names of the two (default: A,B)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    labels = tuple(args.labels.split(","))
    if len(labels) != 2:
        raise SystemExit(f"--labels needs two names, got {len(labels)}: {args.labels}")
    paths = [(args.a, args.b), *map(tuple, args.more)]
    pairs = [(answers(a), answers(b)) for a, b in paths]
    parts = []
    for (a, b), (path_a, path_b) in zip(pairs, paths):
        table, only_a, only_b = paired_table(a, b, labels)
        heading = f"## {path_a} against {path_b}\n\n" if len(pairs) > 1 else ""
        parts.append(f"{heading}{table}\nPrompts compared: those in both; left out: {only_a} only in {labels[0]} "
                     f"({path_a}), {only_b} only in {labels[1]} ({path_b}).\n")
    if len(pairs) > 1:
        parts.append(f"## The {len(pairs)} pairs pooled\n\n{paired_table(*pooled(pairs), labels)[0]}")
    note = "McNemar's exact test counts the prompts one answered right and the other not.\n"
    text = "\n".join(parts) + f"\n{note}"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
