"""scripts/niah_answer_starts.py: how NIAH answers begin, counted from `hypenet eval`'s niah_samples.jsonl."""

import json
import lzma
from pathlib import Path

import pytest
from conftest import load_script

starts = load_script("niah_answer_starts")

ROWS = [
    {"task": "single_2", "context_len": 4096, "output": "\nthe number of the whale's tail-fin", "correct": False,
     "value": "1949650"},
    {"task": "single_2", "context_len": 4096, "output": " \nthe number 6377450.", "correct": True, "value": "6377450"},
    {"task": "single_2", "context_len": 8192, "output": " 7392396.", "correct": True, "value": "7392396"},
    {"task": "single_1", "context_len": 4096, "output": " 664827.\n\nThe special", "correct": False,
     "value": "6648274"},
]


def test_counts_line_break_starts_per_task():
    assert starts.starts_with_line_break(" \t\nx") and not starts.starts_with_line_break(" x\n")
    assert starts.answer_starts(ROWS) == {
        "single_1": {"answers": 1, "right": 0, "line_break": 0, "right_without_line_break": 0, "dropped_one": 1,
                     "restated": 0, "colon_break": 0, "began_value": 1, "reference": 0, "short_number": 0,
                     "first_digit_1": 0,
                     "values_first_digit_1": 0, "number_values": 1},
        "single_2": {"answers": 3, "right": 2, "line_break": 2, "right_without_line_break": 1, "dropped_one": 0,
                     "restated": 0, "colon_break": 0, "began_value": 0, "reference": 0, "short_number": 0,
                     "first_digit_1": 0,
                     "values_first_digit_1": 1, "number_values": 3},
    }


def test_a_miss_one_character_short_is_the_value_less_one_character():
    assert starts.drops_one_character(" 664827.\n\nThe special", "6648274")  # the last digit left out
    assert starts.drops_one_character(": 625303, and", "6253003")  # one of two zeros
    assert starts.drops_one_character(" 446df597-f662-488d-be10-5b0f0aecc22.", "446df597-f662-488d-be10-5b0f0aecc22f")
    assert not starts.drops_one_character(" 6648274.", "6648274")  # right, not short
    assert not starts.drops_one_character(" 664828.", "6648274")  # short and wrong
    assert not starts.drops_one_character(" 66482.", "6648274")  # two short
    assert not starts.drops_one_character("", "6648274") and not starts.drops_one_character("\n\n", "6648274")


def test_table_labels_runs_and_filters_lengths(tmp_path, capsys):
    path = tmp_path / "lease" / "eval" / "student" / "niah_samples.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    starts.main([str(path), "--lengths", "4096", "--out", str(tmp_path / "t.md")])
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "t.md").read_text()
    assert printed.splitlines()[2:] == [
        "| lease/student | single_1 | 1 | 0% | 0% | 0 / 1 | 1 / 1 | 0 | 0 | 1 | 0 | 0 | 0 / 0 |",
        "| lease/student | single_2 | 2 | 50% | 100% | 0 / 0 | 0 / 1 | 0 | 0 | 0 | 0 | 0 | 0 / 1 |"]
    with pytest.raises(SystemExit):
        starts.main([str(path), "--lengths", "4K"])
    assert "--lengths takes token counts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        starts.main([str(tmp_path / "missing.jsonl")])
    assert "no such file" in capsys.readouterr().err
    path.with_name("niah_samples.jsonl.xz").write_bytes(lzma.compress(path.read_bytes()))  # as results/ keeps it
    path.unlink()
    starts.main([str(path), "--lengths", "4096"])
    assert capsys.readouterr().out == printed


def test_run_labels_name_the_run_and_any_other_evaluation_of_it():
    assert starts.run_label(Path("results/gpu_convert/lease/eval/student/niah_samples.jsonl")) == "lease/student"
    assert starts.run_label(Path("results/gpu_convert/lease/eval_6_samples/student/niah_samples.jsonl")) == \
        "lease/eval_6_samples/student"
    assert starts.run_label(Path("student/niah_samples.jsonl")) == "student"
    assert starts.run_label(Path("default_seed1/lease24/results/eval_more/hypenet-halo/niah_samples.jsonl")) == \
        "default_seed1/lease24/eval_more/hypenet-halo"
    assert starts.run_label(Path("determinism/lease51/bases/8000_merged/niah_samples.jsonl")) == "lease51/8000_merged"


def test_first_digit_1_counts_answers_and_values_of_number_needles():
    """A student that lost the needle writes a short number beginning with 1 (" 12."): counted beside the values
    beginning with 1, for tasks whose values are numbers only."""
    rows = [{"task": "single_1", "context_len": 4096, "output": " 12.", "correct": False, "value": "6648274"},
            {"task": "single_1", "context_len": 4096, "output": ": 1949650", "correct": True, "value": "1949650"},
            {"task": "single_1", "context_len": 4096, "output": " the number 7392396", "correct": True,
             "value": "7392396"},
            {"task": "single_3", "context_len": 4096, "output": " 1b4e28ba-2fa1", "correct": False,
             "value": "a8098c1a-f86e-11da-bd1a-00112444be1e"}]
    assert starts.first_digit(" the number 7392396") == "7" and starts.first_digit("\nno digits") is None
    counts = starts.answer_starts(rows)
    assert (counts["single_1"]["first_digit_1"], counts["single_1"]["values_first_digit_1"]) == (2, 1)
    assert starts._first_digits(counts["single_1"]) == "2 / 1"
    assert starts._first_digits(counts["single_3"]) == "-"  # UUIDs are not numbers


def test_a_miss_that_writes_the_answer_prefix_again_restates_the_prompt():
    assert starts.restates_prompt(" the special magic number for sly-engine mentioned in the")
    assert starts.restates_prompt("\nThe special magic uuid for calm-harbor is")
    assert not starts.restates_prompt(" 7978852. The special magic number")  # the value first
    rows = [{"task": "single_1", "context_len": 4096, "output": " the special magic number for sly-engine mentioned",
             "correct": False, "value": "7978852"},
            {"task": "single_1", "context_len": 4096, "output": " the special magic number for sly-engine is 7978852",
             "correct": True, "value": "7978852"}]
    assert starts.answer_starts(rows)["single_1"]["restated"] == 1  # only misses are counted


def test_a_miss_that_is_a_colon_and_a_line_break_is_counted():
    """The thirty-seventh lease's student answered Single-1 past 16K with ":\n\nVEGAR\n..." instead of the value."""
    assert starts.breaks_after_colon(":\n\nVEGAR\n") and starts.breaks_after_colon(" : \r\nX")
    assert not starts.breaks_after_colon(": 7756841\n") and not starts.breaks_after_colon("\n:\n")
    assert not starts.breaks_after_colon(" 7756841:\n")
    rows = [{"task": "single_1", "context_len": 32768, "output": ":\n\nSUNYMAGIC_NUMBER", "correct": False,
             "value": "7756841"},
            {"task": "single_1", "context_len": 32768, "output": ":\n7756841", "correct": True, "value": "7756841"},
            {"task": "single_1", "context_len": 32768, "output": " 1.\n\nThe special", "correct": False,
             "value": "6606841"}]
    assert starts.answer_starts(rows)["single_1"]["colon_break"] == 1  # only misses are counted


def test_misses_that_begin_the_value_or_cite_a_reference():
    """A miss that begins the value found the needle and lost the copy (" 7152." for 7152935); one that cites a
    reference wrote the Bible haystack's chapter and verse (" 11:25") instead."""
    assert starts.begins_value(" 7152.\n\n28:1", "7152935") and starts.begins_value(": 9517.", "9516563")
    assert starts.begins_value(" 607.\n\n11:25", "6061680") and not starts.begins_value(" 72.", "7152935")
    assert not starts.begins_value(" 1000.", "7152935") and not starts.begins_value(" 7", "7152935")
    assert starts.begins_value(" 446df5", "446df597-f662") and not starts.begins_value(" 12", "12")
    assert starts.cites_reference(" 11:25 The number of the powers") and starts.cites_reference(" 1:10:10:11:")
    assert not starts.cites_reference(" 7152935.") and not starts.cites_reference(" 11.")
    assert not starts.cites_reference(" the 11:25") and not starts.cites_reference("")
    rows = [{"task": "single_2", "context_len": 4096, "output": " 11:25: 11:3", "correct": False, "value": "1949650"},
            {"task": "single_2", "context_len": 4096, "output": " 1949.", "correct": False, "value": "1949650"},
            {"task": "single_2", "context_len": 4096, "output": " 1949650.", "correct": True, "value": "1949650"}]
    counts = starts.answer_starts(rows)["single_2"]
    assert (counts["reference"], counts["began_value"], counts["right"]) == (1, 1, 1)  # a right answer is no miss


def test_a_miss_that_writes_a_number_two_digits_short_or_more_is_a_short_number():
    """A student that has lost the needle makes up a short number (" 1.", " 12345." for a 7-digit value); a copy one
    digit short, a reference or a word is not one."""
    assert starts.writes_short_number(" 1. The special magic", "7152935")
    assert starts.writes_short_number(": 12345.", "7152935") and starts.writes_short_number(" 13:", "7152935")
    assert not starts.writes_short_number(" 715293.", "7152935") and not starts.writes_short_number(" 11:25", "7152935")
    assert not starts.writes_short_number(" blue.", "7152935") and not starts.writes_short_number(" 1.", "446df597")
    rows = [{"task": "single_1", "context_len": 4096, "output": " 1.", "correct": False, "value": "1949650"},
            {"task": "single_1", "context_len": 4096, "output": " 12.", "correct": False, "value": "1949650"},
            {"task": "single_1", "context_len": 4096, "output": " 19496.", "correct": True, "value": "19496"}]
    assert starts.answer_starts(rows)["single_1"]["short_number"] == 2  # a right answer is no miss
