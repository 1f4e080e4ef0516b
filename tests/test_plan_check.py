"""scripts/plan_check.py: a report's recorded stage times beside the plan made again from the report's config."""

import json
from pathlib import Path

import pytest
from conftest import load_script
from transformers import Qwen3Config

from hypenet.halo.config import load_config, to_dict
from hypenet.halo.plan import make_plan

plan_check = load_script("plan_check")


def test_each_stage_is_set_beside_its_estimate(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16).save_pretrained(teacher)
    config = load_config("smoke", teacher="/elsewhere/teacher", out="/elsewhere/run")
    report = {"config": to_dict(config), "stages": {"stage1": {"wall_time_s": 3.0}, "stage2": {"wall_time_s": 8.0},
                                                    "select": {"wall_time_s": 1.0}}}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    out = tmp_path / "check" / "plan_check.json"
    assert plan_check.main([str(path), "--teacher", str(teacher), "--out", str(out)]) == 0
    config.teacher, config.out = str(teacher), str(tmp_path / "none")
    expected = {row["stage"]: row["h200_hours"] * 3600 for row in make_plan(config)["stages"]}
    row = json.loads(out.read_text())[0]
    assert row["stage1"]["estimate_s"] == round(expected["stage1"], 1)
    assert row["stage1"]["ratio"] == round(3.0 / expected["stage1"], 3)
    assert row["stage2"]["ratio"] == round(8.0 / expected["stage2"], 3)
    assert row["stage3"] == {"tokens": config.stage3.tokens, "estimate_s": round(expected["stage3"], 1),
                             "measured_s": None, "ratio": None}
    printed = capsys.readouterr().out
    assert printed == out.with_suffix(".md").read_text()
    assert printed.endswith("stage3 -\n") and "Median measured / estimate: stage1 " in printed
    assert not Path("/elsewhere").exists()


def test_a_report_without_its_config_is_refused(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"stages": {}}))
    with pytest.raises(ValueError, match="records no config"):
        plan_check.main([str(path)])
