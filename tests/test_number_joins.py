"""scripts/number_joins.py: how often stages 2-3's made-up numbers end right before a digit of the text."""

import random

import numpy as np
import pytest
from conftest import load_script
from test_halo_pipeline import make_teacher, make_tokenizer, write_jsonl

joins = load_script("number_joins")

LED = np.zeros(20, dtype=bool)
LED[10:] = True  # tokens 10-19 begin with a digit


def test_counts_the_numbers_a_digit_of_the_text_continues():
    row = np.array([1, 2, 10, 11, 12, 13, 3, 4, 10, 11, 15, 5, 10, 11, 12, 14])
    rows = [
        (row, [("number", 2, 6), ("copy", 8, 10), ("decoy", 12, 15)]),  # 13 after the copy's [10, 11]
        (row, [("number", 2, 5), ("copy", 12, 16)]),  # 13 after the number; the copy ends the row
        (row, []),  # a row without a number
    ]
    assert joins.count_joins(rows, LED) == {
        "kinds": {"number": {"written": 2, "joined": 1}, "copy": {"written": 2, "joined": 1},
                  "decoy": {"written": 1, "joined": 1}},
        "rows": 2, "rows_joined": 2,
    }
    assert joins.count_joins([(row, [("number", 2, 6), ("copy", 12, 16)])], LED)["rows_joined"] == 0
    text = joins.table(joins.count_joins(rows, LED), "title")
    assert "| number | 1 of 2 (50.0%) |" in text and "| decoy | 1 of 1 (100.0%) |" in text
    assert "| chunks with a made-up number | 2 of 2 (100.0%) with one joined |" in text


def test_digit_led_marks_the_tokens_that_begin_with_a_digit(tmp_path):
    tokenizer = make_tokenizer(["page 12 of 345, line 6.", "no digits here"], vocab_size=280)
    led = joins.digit_led(tokenizer)
    assert len(led) == len(tokenizer)
    for i in range(len(tokenizer)):
        assert led[i] == tokenizer.decode([i])[:1].isdigit()
    assert led[tokenizer.convert_tokens_to_ids("7")] and not led[tokenizer.convert_tokens_to_ids("a")]


@pytest.fixture(scope="module")
def teacher_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("joins")
    rng = random.Random(0)
    words = "the cat sat on page of line and river house".split()
    documents = [" ".join(rng.choice(words) if rng.random() < 0.8 else str(rng.randint(0, 999))
                          for _ in range(rng.randint(80, 200))) for _ in range(60)]
    return make_teacher(root / "teacher", "llama", make_tokenizer(documents)), write_jsonl(root / "data.jsonl",
                                                                                           documents)


def test_counts_a_conversions_stage_data(teacher_and_data, tmp_path, capsys):
    teacher, data = teacher_and_data
    config = tmp_path / "numbers.yaml"
    config.write_text("data: {repeat_spans: 1.0, repeat_numbers: 1.0, number_decoys: 2}\n"
                      "stage2: {tokens: 4096, seq_len: 256, batch_size: 4}\n")
    out = tmp_path / "joins.md"
    assert joins.main(["--config", str(config), "--teacher", str(teacher), "--data", str(data), "--out",
                       str(out)]) == 0
    text = out.read_text()
    assert "stage2's first 16 items, seed 0, repeat_spans 1.0, repeat_numbers 1.0, number_decoys 2" in text
    # every one of the 16 chunks gets a number and its copy (256 tokens hold 4 x any span), and at most 2 decoys each
    assert "| number | " in text and " of 16 (" in text.split("| number | ")[1].split("\n")[0]
    assert " of 16 (" in text.split("| copy | ")[1].split("\n")[0]
    decoys = int(text.split("| decoy | ")[1].split(" of ")[1].split(" ")[0])
    assert 0 < decoys <= 32
    assert "| chunks with a made-up number | " in text and " of 16 (" in text.split("made-up number | ")[1]
    joins.main(["--config", str(config), "--teacher", str(teacher), "--data", str(data), "--items", "3"])
    assert "stage2's first 3 items" in capsys.readouterr().out
    half = tmp_path / "half.yaml"  # half the chunks numbers, the other half UUIDs: the numbers' counts are those alone
    half.write_text("data: {repeat_spans: 1.0, repeat_numbers: 0.5, number_decoys: 2}\n"
                    "stage2: {tokens: 4096, seq_len: 256, batch_size: 4}\n")
    capsys.readouterr()
    tables = []
    for extra in ([], ["--set", "data.repeat_uuids=0.5"]):
        joins.main(["--config", str(half), "--teacher", str(teacher), "--data", str(data), *extra])
        tables.append(capsys.readouterr().out)
    assert tables[0] == tables[1] and "| chunks with a made-up number | " in tables[0]


def test_a_config_without_numbers_is_refused(teacher_and_data, tmp_path, capsys):
    teacher, data = teacher_and_data
    with pytest.raises(SystemExit):
        joins.main(["--teacher", str(teacher), "--data", str(data), "--set", "data.repeat_spans=0.5"])
    assert "the config plants no made-up numbers: it needs data.repeat_spans and data.repeat_numbers" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        joins.main(["--teacher", str(teacher), "--data", str(data), "--items", "0"])
    assert "--items is a count of stream items, 1 or more; got 0" in capsys.readouterr().err
