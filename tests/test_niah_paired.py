"""scripts/niah_paired.py and mcnemar_exact_p: two evaluations of the same NIAH prompts compared answer by answer."""

import json
import lzma
import math
from pathlib import Path

import pytest
from conftest import load_script

from hypenet.eval.niah import mcnemar_exact_p

niah_paired = load_script("niah_paired")


def test_mcnemar_exact_p_is_the_two_sided_binomial_tail():
    assert mcnemar_exact_p(11, 2) == pytest.approx(2 * (1 + 13 + 78) / 2**13)  # 2 * P(X <= 2), X ~ Bin(13, 1/2)
    assert mcnemar_exact_p(2, 11) == mcnemar_exact_p(11, 2)
    assert mcnemar_exact_p(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact_p(3, 3) == 1.0 and mcnemar_exact_p(0, 0) == 1.0  # capped at 1; no split prompt: no evidence
    assert mcnemar_exact_p(30, 0) == pytest.approx(2 / 2**30)
    assert math.isclose(mcnemar_exact_p(6, 1), 2 * 8 / 128)
    with pytest.raises(ValueError, match="must be >= 0"):
        mcnemar_exact_p(-1, 3)


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def sample(seed: int, correct: bool, output: str, task: str = "single_1", length: int = 4096) -> dict:
    return {"task": task, "context_len": length, "depth": 0.5, "seed": seed, "key": f"k{seed}", "value": str(seed),
            "n_tokens": length - 50, "output": output, "correct": correct}


def test_prompts_are_paired_and_counted_per_length_and_task(tmp_path):
    a = write(tmp_path / "a.jsonl", [sample(1, True, "1"), sample(2, True, "2"), sample(3, False, "x"),
                                     sample(4, False, "y"), sample(5, True, "5", task="single_2"),
                                     sample(6, True, "6", length=8192)])  # (8K: a alone, left out)
    b = write(tmp_path / "b.jsonl", [sample(1, True, "1"), sample(2, False, "z"), sample(3, True, "3"),
                                     sample(4, False, "y"), sample(5, True, "5!", task="single_2")])
    table, only_a, only_b = niah_paired.paired_table(niah_paired.answers(a), niah_paired.answers(b), ("A", "B"))
    rows = table.splitlines()
    assert rows[0].startswith("| length | task | prompts | both right | only A | only B | neither | A / B right |")
    assert rows[2] == "| 4K | single_1 | 4 | 1 | 1 | 1 | 1 | 2 / 2 | 2 | 1 |"
    assert rows[3] == "| 4K | single_2 | 1 | 1 | 0 | 0 | 0 | 1 / 1 | 0 | 1 |"
    assert rows[4] == "| **4K** | **all** | 5 | 2 | 1 | 1 | 1 | 3 / 3 | 2 | 1 |"
    assert rows[5] == "| **all** | **all** | 5 | 2 | 1 | 1 | 1 | 3 / 3 | 2 | 1 |" and len(rows) == 6
    assert (only_a, only_b) == (1, 0)


def test_a_packed_samples_file_is_read_under_its_plain_name(tmp_path):
    rows = [sample(1, True, "1"), sample(2, False, "z")]
    plain = niah_paired.answers(write(tmp_path / "a.jsonl", rows))
    packed = tmp_path / "b" / "niah_samples.jsonl"
    packed.parent.mkdir()
    packed.with_name("niah_samples.jsonl.xz").write_bytes(lzma.compress((tmp_path / "a.jsonl").read_bytes()))
    assert niah_paired.answers(packed) == plain
    with pytest.raises(SystemExit, match="no .*missing.jsonl"):
        niah_paired.answers(tmp_path / "missing.jsonl")


def test_a_lopsided_split_gets_a_small_p(tmp_path):
    a = write(tmp_path / "a.jsonl", [sample(s, s < 9, str(s)) for s in range(10)])
    b = write(tmp_path / "b.jsonl", [sample(s, s < 1, str(s)) for s in range(10)])
    table, _, _ = niah_paired.paired_table(niah_paired.answers(a), niah_paired.answers(b), ("A", "B"))
    assert f"| **all** | **all** | 10 | 1 | 8 | 0 | 1 | 9 / 1 | 10 | {mcnemar_exact_p(8, 0):.2g} |" in table


def test_bad_inputs_say_what_is_wrong(tmp_path):
    a = write(tmp_path / "a.jsonl", [sample(1, True, "1")])
    other = write(tmp_path / "other.jsonl", [sample(2, True, "2")])
    with pytest.raises(SystemExit, match="share no prompt"):
        niah_paired.paired_table(niah_paired.answers(a), niah_paired.answers(other), ("A", "B"))
    twice = write(tmp_path / "twice.jsonl", [sample(1, True, "1"), sample(1, False, "x")])
    with pytest.raises(SystemExit, match="answers one prompt twice"):
        niah_paired.answers(twice)
    with pytest.raises(SystemExit, match="no .*missing.jsonl: give the niah_samples.jsonl"):
        niah_paired.answers(tmp_path / "missing.jsonl")


def test_pairs_are_pooled_with_each_pairs_prompts_counted_apart(tmp_path, monkeypatch, capsys):
    # two students asked the same two prompts at settings A and B: pair 1 splits one each way, pair 2 both to B
    a1 = write(tmp_path / "a1.jsonl", [sample(1, True, "1"), sample(2, False, "x")])
    b1 = write(tmp_path / "b1.jsonl", [sample(1, False, "y"), sample(2, True, "2")])
    a2 = write(tmp_path / "a2.jsonl", [sample(1, False, "z"), sample(2, False, "x")])
    b2 = write(tmp_path / "b2.jsonl", [sample(1, True, "1"), sample(2, True, "2")])
    a, b = niah_paired.pooled([(niah_paired.answers(a1), niah_paired.answers(b1)),
                               (niah_paired.answers(a2), niah_paired.answers(b2))])
    assert len(a) == len(b) == 4
    table, only_a, only_b = niah_paired.paired_table(a, b, ("A", "B"))
    assert f"| **all** | **all** | 4 | 0 | 1 | 3 | 0 | 1 / 3 | 0 | {mcnemar_exact_p(1, 3):.2g} |" in table
    assert (only_a, only_b) == (0, 0)
    out = tmp_path / "pooled.md"
    monkeypatch.setattr("sys.argv", ["niah_paired.py", str(a1), str(b1), "--and", str(a2), str(b2), "--labels",
                                     "x,y", "--out", str(out)])
    niah_paired.main()
    text = out.read_text()
    assert text == capsys.readouterr().out
    assert text.count("## ") == 3 and "## The 2 pairs pooled" in text
    assert f"| **all** | **all** | 4 | 0 | 1 | 3 | 0 | 1 / 3 | 0 | {mcnemar_exact_p(1, 3):.2g} |" in text
