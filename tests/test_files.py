"""hypenet.files: results/ keeps JSON-lines records as NAME.jsonl.xz; readers name NAME.jsonl and get either."""

import lzma

import pytest

from hypenet import files


def test_the_plain_file_is_read_and_wins_over_a_packed_one(tmp_path):
    plain = tmp_path / "a.jsonl"
    plain.write_text('{"step": 1}\n')
    with lzma.open(tmp_path / "a.jsonl.xz", "wt") as f:
        f.write('{"step": 2}\n')
    assert files.find(plain) == plain
    assert files.read_text(plain) == '{"step": 1}\n'


def test_a_packed_file_is_read_under_its_plain_name_or_its_own(tmp_path):
    text = "".join(f'{{"step": {s}, "note": "é"}}\n' for s in range(500))
    with lzma.open(tmp_path / "a.jsonl.xz", "wt", encoding="utf-8") as f:
        f.write(text)
    assert files.find(tmp_path / "a.jsonl") == tmp_path / "a.jsonl.xz"
    assert files.read_text(tmp_path / "a.jsonl") == text
    assert files.read_text(str(tmp_path / "a.jsonl.xz")) == text


def test_neither_file_is_none_or_an_error_naming_both(tmp_path):
    assert files.find(tmp_path / "b.jsonl") is None
    (tmp_path / "c.jsonl").mkdir()  # a folder is not the file
    assert files.find(tmp_path / "c.jsonl") is None
    with pytest.raises(FileNotFoundError, match=r"no .*b\.jsonl \(nor b\.jsonl\.xz beside it\)"):
        files.read_text(tmp_path / "b.jsonl")
