"""scripts/teacher_copies.py: how well the teacher predicts the copies of stages 2-3's made-up values."""


import numpy as np
import pytest
import torch
from conftest import load_script
from test_number_joins import teacher_and_data  # noqa: F401 (a fixture)

copies = load_script("teacher_copies")


def test_scores_the_first_token_of_each_copy_apart_from_the_rest():
    row = np.array([1, 2, 7, 8, 9, 3, 4, 7, 8, 9, 5])
    placed = [("number", 2, 5), ("decoy", 0, 1), ("copy", 7, 10)]

    def probabilities(r, positions):  # sure of the copy's first token, leaning to its second, wrong on its third
        assert positions == [6, 7, 8]
        probs = torch.zeros(len(positions), 12)
        probs[0, 7], probs[1, 8], probs[1, 0], probs[2, 0] = 1.0, 0.6, 0.4, 1.0
        return probs

    scores = copies.copy_scores([(row, placed, "number"), (row, [], "number"), (row, placed, "uuid")], probabilities)
    # (the row without a copy is left out); the copy's two tokens before it, [3, 4], are not those before the value
    assert scores["number"] == {"values": 1, "first": [1, 1, 1.0], "rest": [2, 1, pytest.approx(0.6)],
                                "by_lead": {"other": [1, 1, 1.0]}}
    assert scores["uuid"]["values"] == 1
    text = copies.table(scores, "title")
    assert "| number | 1 | 1 of 1 (100.0%), p 1.000 | 1 of 2 (50.0%), p 0.300 |" in text
    assert "| number | other tokens | 1 | 1 of 1 (100.0%), p 1.000 |" in text


def test_the_first_token_is_also_counted_by_the_text_copied_before_the_value():
    value = np.arange(100, 105)
    text = np.arange(1, 41)
    for lead, bucket in ((4, "4-7"), (9, "8-11"), (16, "12-16")):
        row = np.concatenate([text[:20], value, text[20:35], text[20 - lead:20], value, [0]])
        start = 20 + 5 + 15 + lead  # the copy's first value token
        placed = [("number", 20, 25), ("copy", start, start + 5)]
        scores = copies.copy_scores([(row, placed, "number")], lambda r, positions: torch.full((len(positions), 110),
                                                                                             1 / 110))
        assert scores["number"]["by_lead"] == {bucket: [1, 0, pytest.approx(1 / 110)]}


def test_next_token_probabilities_are_the_models_at_those_positions(teacher_and_data):  # noqa: F811
    from transformers import AutoModelForCausalLM

    teacher, _ = teacher_and_data
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    row = np.arange(3, 43, dtype=np.uint32)
    positions = [5, 17, 30]
    with torch.no_grad():
        full = model(torch.as_tensor(row[:31].astype(np.int64))[None]).logits[0].softmax(dim=-1)
    torch.testing.assert_close(copies.next_token_probabilities(model, row, positions), full[positions])


def test_next_token_probabilities_of_a_hypenet_student():
    from test_model import tiny_hypenet

    model = tiny_hypenet()
    row = np.arange(3, 43, dtype=np.uint32)
    with torch.no_grad():
        full = model(torch.as_tensor(row[:31].astype(np.int64))[None]).logits[0].float().softmax(dim=-1)
    torch.testing.assert_close(copies.next_token_probabilities(model, row, [0, 12, 30]), full[[0, 12, 30]])


def test_scores_another_model_on_the_same_copies(teacher_and_data, tmp_path):  # noqa: F811
    """--model scores that model on the teacher's data: the teacher's own folder gives the teacher's numbers."""
    teacher, data = teacher_and_data
    config = tmp_path / "values.yaml"
    config.write_text("data: {repeat_spans: 1.0, repeat_numbers: 0.5, repeat_uuids: 0.5}\n"
                      "stage2: {tokens: 4096, seq_len: 256, batch_size: 4}\n")
    tables = []
    for extra in ([], ["--model", str(teacher)]):
        out = tmp_path / f"copies{len(tables)}.md"
        copies.main(["--config", str(config), "--teacher", str(teacher), "--data", str(data), "--rows", "4",
                     "--out", str(out), *extra])
        tables.append(out.read_text().split("\n", 1))
    assert tables[0][0].startswith("# The teacher on the copies") and tables[1][0].startswith(f"# {teacher} on the")
    assert tables[0][1] == tables[1][1]
    assert any(line.startswith(("| number | ", "| uuid | ")) for line in tables[0][1].splitlines())


def test_scores_a_conversions_stage_data(teacher_and_data, tmp_path, capsys):  # noqa: F811
    teacher, data = teacher_and_data
    config = tmp_path / "values.yaml"
    config.write_text("data: {repeat_spans: 1.0, repeat_numbers: 0.5, repeat_uuids: 0.5}\n"
                      "stage2: {tokens: 4096, seq_len: 256, batch_size: 4}\n")
    out = tmp_path / "copies.md"
    assert copies.main(["--config", str(config), "--teacher", str(teacher), "--data", str(data), "--rows", "6",
                        "--out", str(out)]) == 0
    text = out.read_text()
    assert "stage2's made-up values: its first 6 stream items with one, seed 0" in text
    assert "repeat_numbers 0.5, repeat_uuids 0.5" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith(("| number", "| uuid"))]
    assert sum(int(r[1]) for r in rows if "tokens" not in r[1]) == 6  # every item here has a value, scored once
    assert sum(int(r[2]) for r in rows if "tokens" in r[1]) == 6  # ... and counted once by its copied text
    with pytest.raises(SystemExit):
        copies.main(["--teacher", str(teacher), "--data", str(data), "--set", "data.repeat_spans=0.5"])
    assert "the config plants no made-up values" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        copies.main(["--teacher", str(teacher), "--data", str(data), "--rows", "0"])
    assert "--rows is a count of stream items, 1 or more; got 0" in capsys.readouterr().err
