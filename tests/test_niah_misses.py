"""scripts/niah_misses.py: what a multi-needle NIAH answer wrote, read against the prompt rebuilt from its seed."""

import json
import re
from pathlib import Path

import pytest
from conftest import load_script
from test_eval_tiny import HAYSTACK_DOCS, tiny_tokenizer

from hypenet.eval.documents import load_documents
from hypenet.eval.niah import answers_of, build_niah_grid

niah_misses = load_script("niah_misses")

NUMBERS = ("Some text. One of the special magic numbers for amber-anchor is: 1234567. The year 5550001 came. "
           "One of the special magic numbers for keen-fox is: 7654321. More text.")
KEY, OTHER_KEY = "0b2c3d4e-1111-4222-8333-944455566677", "aa11bb22-3c3c-4d4d-8e8e-9f9f00001111"
VALUE, OTHER_VALUE = "12345678-aaaa-4bbb-8ccc-dddddddddddd", "87654321-ffff-4eee-9ddd-cccccccccccc"
UUIDS = (f"One of the special magic uuids for {KEY} is: {VALUE}. "
         f"One of the special magic uuids for {OTHER_KEY} is: {OTHER_VALUE}. "
         "Order 11111111-2222-4333-8444-555555555555 came.")


@pytest.mark.parametrize("output, expected", [
    (" 1234567.", "asked"),
    (": 7654321. And", "other needle"),
    (" 123467.", "near asked"),  # one digit dropped
    (" 1234.\n\n28:1", "near asked"),  # stopped after four digits
    (" 76543", "near other needle"),  # stopped after five
    (" 7654821", "near other needle"),  # one digit changed
    (" 5550001", "in the prompt"),
    (" 12.", "made up"),  # two digits are no copy begun, nor a number of the prompt
    (" 234567", "near asked"),  # the first digit dropped
    (" 4567", "made up"),  # a value's end is no copy begun
    (" 9990001", "made up"),
    (":\n\nThe answer", "none"),
])
def test_a_number_answer_is_classed_by_the_prompts_needles(output, expected):
    assert niah_misses.classify(output, ["1234567"], ["amber-anchor"], NUMBERS, "multikey_1") == expected


@pytest.mark.parametrize("output, expected", [
    (f" {VALUE}.", "asked"),
    (f" {OTHER_VALUE}", "other needle"),
    (f" {KEY}.", "asked key"),  # the question's key written back
    (f" {OTHER_KEY}", "other key"),
    (" 11111111-2222-4333-8444-555555555555.", "in the prompt"),
    (" 00000000-0000-4000-8000-000000000000", "made up"),
    (" 20000000-0000-4222-4222-4222-4222", "made up"),  # UUID-like, its groups of the wrong length
    (": 12345678-aaaa-4bbb.  It is", "near asked"),  # a copy stopped after three groups
    (" 87654321-ffff-4eee-9ddd-ccccccccccc.", "near other needle"),  # one character short
    (" 12345678-aaaa-4bbb-8ccc-dddddddddddd-87654321", "asked"),  # a whole UUID first
    (" 1234567", "none"),  # too short to be begun as a UUID
    (" the one in the text, defaced", "none"),  # hex letters inside a word are no UUID
    (" deadbeefs-aaaa", "none"),
])
def test_a_uuid_answer_is_classed_by_the_prompts_needles_and_keys(output, expected):
    assert niah_misses.classify(output, [VALUE], [KEY], UUIDS, "multikey_3") == expected


def test_within_two_edits():
    assert niah_misses.within_two_edits("1234567", "1234567")
    assert niah_misses.within_two_edits("1234567", "12567")  # two dropped
    assert not niah_misses.within_two_edits("1234567", "1267")  # three dropped
    assert not niah_misses.within_two_edits("1234567", "7654321")


def run_folder(tmp_path: Path, tokenizer) -> tuple[Path, list]:
    """An eval folder as `hypenet eval` writes it (the settings and one row per sample), from the same grid."""
    haystack = tmp_path / "haystack.jsonl"
    haystack.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in HAYSTACK_DOCS))
    settings = {"tasks": ["multikey_1", "multikey_2"], "niah_lengths": [600], "niah_depths": [0.5],
                "niah_samples": 3, "seed": 0, "haystack": str(haystack), "haystack_heldout": False,
                "ppl_heldout_fraction": None, "chat_template": False}
    grid = build_niah_grid(tokenizer, settings["tasks"], [600], [0.5], 3, 0, load_documents(str(haystack)), False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"settings": settings}))
    return run, grid


def write_rows(run: Path, grid: list, outputs: list[str]) -> None:
    rows = [{"task": s.task, "context_len": s.context_len, "depth": s.depth, "seed": s.seed, "key": s.key,
             "value": s.value, "n_tokens": s.n_tokens, "output": output} for s, output in zip(grid, outputs)]
    (run / "niah_samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_a_run_is_read_against_its_rebuilt_prompts_and_tabled(tmp_path):
    tokenizer = tiny_tokenizer()
    run, grid = run_folder(tmp_path, tokenizer)
    assert [s.task for s in grid] == ["multikey_1"] * 3 + ["multikey_2"] * 3
    others = [[v for v in re.findall(r"numbers for .+? is: (\d+)\.", s.prompt) if v not in answers_of(s)]
              for s in grid]
    assert all(others), "every prompt holds needles of other keys"
    outputs = [f" {grid[0].value}.", f" {others[1][0]}.", " 1.", f": {others[3][-1]}", " 9", "\n\nNo"]
    write_rows(run, grid, outputs)
    rows = niah_misses.read_run(run, tokenizer)
    assert [row["class"] for row in rows][:4] == ["asked", "other needle", "made up", "other needle"]
    assert rows[5]["class"] == "none"
    table = niah_misses.table([("model", rows)])
    assert "| model | multikey_1 | 600 | 3 | 1 | 1 | 0 | 0 | 0 | 0 | 0 | 1 | 0 |" in table
    assert "| model | **all** | **all** | 6 |" in table
    # where the asked needle lies: every prompt here holds needles of other keys
    needles = [re.findall(r"numbers for .+? is: (\d+)\.", s.prompt) for s in grid]
    assert [row["asked_last"] for row in rows] == [n[-1] == s.value for n, s in zip(needles, grid)]
    assert rows[0]["wrote"] == "asked" and rows[2]["wrote"] == rows[5]["wrote"] == "else"
    for i in (1, 3):  # another needle's value: the last needle's, or one before it
        wrote = re.search(r"\d+", outputs[i]).group(0)
        assert rows[i]["wrote"] == ("last needle" if wrote == needles[i][-1] else "other needle")
    recency = niah_misses.recency_table([("model", rows)]).splitlines()
    assert recency[0] == "| model | task | asked needle | prompts | asked | last needle | other needle | else |"
    assert sum(int(line.split("|")[4]) for line in recency[2:]) == 6


def test_a_row_whose_prompt_is_not_rebuilt_is_refused(tmp_path):
    tokenizer = tiny_tokenizer()
    run, grid = run_folder(tmp_path, tokenizer)
    write_rows(run, grid, [" 1"] * len(grid))
    rows = [json.loads(line) for line in (run / "niah_samples.jsonl").read_text().splitlines()]
    rows[2]["value"] = "1111111"  # e.g. another haystack or tokenizer drew other values
    (run / "niah_samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(SystemExit, match=r"prompt of multikey_1 at 600 tokens .* is not the run's: give the haystack"):
        niah_misses.read_run(run, tokenizer)


def test_lengths_are_tabled_in_order_and_single_needle_tasks_get_no_recency_table():
    rows = [{"task": "single_2", "context_len": length, "class": cls}
            for length, cls in ((16384, "made up"), (4096, "asked"), (8192, "in the prompt"), (4096, "near asked"))]
    lines = niah_misses.table([("m", rows)]).splitlines()[2:]
    assert [line.split(" | ")[2] for line in lines] == ["4K", "8K", "16K", "**all**", "**all**"]
    assert lines[0] == "| m | single_2 | 4K | 2 | 1 | 0 | 1 | 0 | 0 | 0 | 0 | 0 | 0 |"
    assert niah_misses.recency_table([("m", rows)]) == ""
