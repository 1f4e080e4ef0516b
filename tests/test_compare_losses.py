"""scripts/compare_losses.py: where two stage-2 runs' per-step losses first differ."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location("compare_losses",
                                              Path(__file__).parent.parent / "scripts" / "compare_losses.py")
compare_losses = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_losses)


def write_run(runs: Path, name: str, rows: list[dict]) -> None:
    stage = runs / name / "stages" / "stage2"
    stage.mkdir(parents=True)
    (stage / "losses.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_pairs_show_the_first_differing_step_the_largest_gap_and_step_times(tmp_path, capsys):
    step = [{"step": s, "loss": loss, "seconds": t} for s, loss, t in [(1, 2.6, 0.5), (2, 1.7, 0.3), (3, 1.3, 0.3)]]
    write_run(tmp_path, "a", step)
    write_run(tmp_path, "b", step)
    write_run(tmp_path, "c", step[:1] + [dict(step[1], loss=1.75), dict(step[2], loss=1.2),
                                         {"event": "resume", "step": 3}, {"step": 4, "loss": 1.0, "seconds": 0.3}])
    compare_losses.main(tmp_path, ["a,b", "a,c", "a,missing"])
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows[0] == "| a vs b | 3 | none | 0 | 0.300 / 0.300 |"
    assert rows[1] == "| a vs c | 3 | 2 | 0.1 | 0.300 / 0.300 |"  # (the resume event has no loss; step 4 only in c)
    assert rows[2] == "| a vs missing | 0 | none | nan | 0.300 / - |"
