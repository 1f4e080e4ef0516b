"""scripts/bases_table.py: one student's logit-scaling bases, the export's losses beside the NIAH answers right."""

import json
from pathlib import Path

import pytest
from conftest import load_script

bases_table = load_script("bases_table")


def test_spearman_and_ranks():
    assert bases_table.ranks([3.0, 1.0, 2.0]) == [3.0, 1.0, 2.0]
    assert bases_table.ranks([1.0, 2.0, 2.0, 5.0]) == [1.0, 2.5, 2.5, 4.0]  # ties share their mean rank
    assert bases_table.spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert bases_table.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # ranks, not values
    # ranks (1, 2, 3, 4) and (2, 1, 4, 3): 1 - 6 * 4 / (4 * 15) = 0.6
    assert bases_table.spearman([1, 2, 3, 4], [20, 10, 40, 30]) == pytest.approx(0.6)
    assert bases_table.spearman([1, 2], [2, 1]) is None and bases_table.spearman([1, 2, 3], [5, 5, 5]) is None
    with pytest.raises(ValueError, match="needs pairs"):
        bases_table.spearman([1, 2, 3], [1, 2])


def grid(tmp_path: Path, name: str, base, right: dict[int, tuple[int, int, int]], samples: int = 30) -> Path:
    """An eval folder of one NIAH grid: right[length] = answers right per task (of `samples` each)."""
    folder = tmp_path / name
    folder.mkdir()
    tasks = {f"single_{i + 1}": {"by_length": {str(n): {"accuracy": r[i] / samples, "samples": samples}
                                               for n, r in right.items()}} for i in range(3)}
    footprint = {} if base is None else {"logit_scaling_base": base}
    (folder / "results.json").write_text(json.dumps({"niah": {"tasks": tasks}, "footprint": footprint,
                                                     "settings": {"logit_scaling_base": None}}))
    return folder


def test_the_table_pairs_each_grid_with_the_export_losses(tmp_path, capsys):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"export": {
        "logit_scaling_base": 16000.0, "losses": {"off": 3.1, "4000": 2.8971, "8000": 2.8785, "16000": 2.8776},
        "copy_losses": {"off": 4.0, "4000": 1.1, "8000": 1.2, "16000": 1.4},
        "losses_by_band": {"16K-32K": {"off": 3.0, "4000": 2.9, "8000": 2.88, "16000": 2.87}},
    }}))
    grids = [grid(tmp_path, "a8000", 8000.0, {65536: (24, 13, 1), 4096: (28, 20, 8)}),
             grid(tmp_path, "export", None, {65536: (21, 8, 0)}),  # at the export's own base: 16000
             grid(tmp_path, "a4000", 4000.0, {65536: (25, 15, 2)}),
             grid(tmp_path, "off", "off", {65536: (5, 1, 0)})]
    out = tmp_path / "table.md"
    assert bases_table.main([str(report), *map(str, grids), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text == out.read_text()
    assert "| a | long-context loss | far-copy loss | 16K-32K | NIAH 4K | NIAH 64K |" in text
    assert "| off | 3.1 | 4 | 3 | - | 6 / 90 |" in text
    assert "| 4000 | 2.8971 | 1.1 | 2.9 | - | 42 / 90 |" in text
    assert "| 8000 | 2.8785 | 1.2 | 2.88 | 56 / 90 | 38 / 90 |" in text
    assert "| 16000 (export's) | 2.8776 | 1.4 | 2.87 | - | 29 / 90 |" in text
    # at 64K: answers right 6, 42, 38, 29 (off, 4000, 8000, 16000); the far-copy loss orders them exactly inversely
    assert "| far-copy loss | - | -1.00 (4 bases) |" in text
    assert "| long-context loss | - | -0.20 (4 bases) |" in text  # ranks (4, 3, 2, 1) against (1, 4, 3, 2)


def test_bad_inputs_are_explained(tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"export": {"logit_scaling_base": 500.0, "losses": {"500": 2.0}}}))
    a = grid(tmp_path, "a", 500.0, {4096: (1, 1, 1)})
    b = grid(tmp_path, "b", None, {4096: (2, 2, 2)})  # the export's base, 500, again at 4K
    with pytest.raises(SystemExit, match="two grids of base 500 at 4K"):
        bases_table.main([str(report), str(a), str(b)])
    with pytest.raises(SystemExit, match="no .*missing: give the folder \\(or results.json\\)"):
        bases_table.main([str(report), str(tmp_path / "missing")])
    (tmp_path / "empty.json").write_text(json.dumps({"model": "x"}))
    with pytest.raises(SystemExit, match="has no export losses"):
        bases_table.main([str(tmp_path / "empty.json"), str(a)])
    export_info = tmp_path / "halo_export.json"  # the checkpoint's own record works as well as the report
    export_info.write_text(json.dumps({"logit_scaling_base": 500.0, "losses": {"500": 2.0}}))
    assert bases_table.main([str(export_info), str(a)]) == 0
