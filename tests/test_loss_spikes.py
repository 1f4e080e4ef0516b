"""scripts/loss_spikes.py: loss spikes in a conversion's stages, read from `hypenet convert`'s report.json."""

import json

import pytest
from conftest import load_script

loss_spikes = load_script("loss_spikes")


def test_a_spike_is_a_point_over_factor_times_the_one_before():
    losses = [[1, 2.6], [10, 1.6], [19, 1.0], [28, 2.87], [37, 5.0], [46, 1.1]]
    assert loss_spikes.spikes(losses, 1.8) == [(28, 1.0, 2.87)]  # 5.0 is under 1.8 x 2.87: the same spike
    assert loss_spikes.spikes(losses, 1.5) == [(28, 1.0, 2.87), (37, 2.87, 5.0)]
    assert loss_spikes.spikes(losses[:1], 1.8) == [] and loss_spikes.spikes([], 1.8) == []


def test_table_lists_each_report_with_the_stage(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"stages": {
        "stage1": {"tokens": 10, "losses": [[1, 400.0], [2, 30.0]]},
        "stage2": {"tokens": 78987264, "losses": [[1, 2.6], [10, 1.0], [19, 2.87], [28, 0.9]]}}}))
    (tmp_path / "none.json").write_text(json.dumps({"stages": {"stage1": {"tokens": 10, "losses": [[1, 4.0]]}}}))
    loss_spikes.main([str(run / "report.json"), str(tmp_path / "none.json"), "--out", str(tmp_path / "t.md")])
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "t.md").read_text()
    assert printed.splitlines()[2:] == [f"| {run} | 78,987,264 | 4 | 19: 1 -> 2.87 |"]  # no stage 2 in none.json
    loss_spikes.main([str(run / "report.json"), "--stage", "stage1"])
    assert capsys.readouterr().out.splitlines()[2:] == [f"| {run} | 10 | 2 | none |"]
    with pytest.raises(SystemExit):
        loss_spikes.main([str(run / "report.json"), "--factor", "0.5"])
    assert "--factor must be more than 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        loss_spikes.main([str(tmp_path / "missing.json")])
    assert "no such file" in capsys.readouterr().err
