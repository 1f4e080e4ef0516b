"""scripts/compare_losses.py: where two runs' per-step losses first differ, and whether two layer choices agree."""

import json
import lzma
from pathlib import Path

import pytest
from conftest import load_script

compare_losses = load_script("compare_losses")


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
    assert rows[2] == "| a vs missing | 0 | - | nan | 0.300 / - |"  # no step in both: not "none differ"


def test_packed_losses_are_read_as_the_plain_ones(tmp_path):
    rows = [{"step": 1, "loss": 2.6, "seconds": 0.5}, {"step": 2, "loss": 1.7, "seconds": 0.3}]
    write_run(tmp_path, "a", rows)
    write_run(tmp_path, "b", rows)
    log = tmp_path / "b" / "stages" / "stage2" / "losses.jsonl"
    log.with_name("losses.jsonl.xz").write_bytes(lzma.compress(log.read_bytes()))
    log.unlink()
    assert compare_losses.steps(tmp_path, "b") == compare_losses.steps(tmp_path, "a") == {r["step"]: r for r in rows}


def test_stage1_losses_are_read_from_their_own_stage(tmp_path, capsys):
    for name, loss in (("a", 478.8), ("b", 478.8), ("c", 478.9)):
        stage = tmp_path / name / "stages" / "stage1"
        stage.mkdir(parents=True)
        (stage / "losses.jsonl").write_text(json.dumps({"step": 1, "loss": loss, "seconds": 9.6}) + "\n")
    compare_losses.main(tmp_path, ["a,b", "a,c"], stage="stage1")
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows == ["| a vs b | 1 | none | 0 | 9.600 / 9.600 |", "| a vs c | 1 | 1 | 0.1 | 9.600 / 9.600 |"]


def test_layer_choices_compare_their_layers_and_scores(tmp_path, capsys):
    choice = {"attention_layers": [7, 14], "scores": {"0": 0.5, "1": 2.0}, "recall": {"0": 0.9, "1": 0.8},
              "commonsense": {"0": 1.0, "1": 0.9}, "wall_time_s": 11.5}
    for name, changes in (("a", {}), ("b", {"wall_time_s": 12.0}),
                          ("c", {"attention_layers": [7, 15], "recall": {"0": 0.9, "1": 0.75}})):
        stage = tmp_path / name / "stages" / "select"
        stage.mkdir(parents=True)
        (stage / "done.json").write_text(json.dumps(choice | changes))
    compare_losses.main(tmp_path, ["a,b", "a,c", "a,missing"], stage="select")
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows[0] == "| a vs b | 7,14 / 7,14 | yes | 0 |"  # (the time taken is not compared)
    assert rows[1] == "| a vs c | 7,14 / 7,15 | no | 0.05 |"
    assert rows[2] == "| a vs missing | - | - | - |"


def test_a_manual_layer_choice_has_no_scores_to_compare():
    halo = {"attention_layers": [4, 7], "scores": {"0": 0.5}, "recall": {"0": 0.9}, "commonsense": {"0": 1.0}}
    manual = {"attention_layers": [7, 14], "strategy": "manual", "scores": None, "recall": None, "commonsense": None}
    assert compare_losses.selection_cells(halo, manual) == "4,7 / 7,14 | no | nan"
    assert compare_losses.selection_cells(manual, manual) == "7,14 / 7,14 | yes | nan"


def test_two_reports_compare_every_stage_the_layer_choice_and_the_export(tmp_path):
    report = {"stages": {"stage1": {"losses": [[1, 470.5], [2, 460.25]], "wall_time_s": 30.2},
                         "stage2": {"losses": [[1, 2.25], [10, 2.0]], "wall_time_s": 640.0}},
              "selection": {"attention_layers": [7, 14], "scores": {"0": 0.5}, "recall": {}, "commonsense": {}},
              "export": {"logit_scaling_base": 16000.0, "losses": {"8000": 2.875, "16000": 2.8725}}}
    other = json.loads(json.dumps(report))
    other["stages"]["stage2"] = {"losses": [[1, 2.25], [10, 2.125], [20, 1.5]], "wall_time_s": 660.4}
    other["stages"]["stage3"] = {"losses": [[1, 3.0]]}
    other["export"] = {"logit_scaling_base": None, "losses": {"8000": 2.75, "16000": 2.875, "off": 2.9}}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(report))
    b.write_text(json.dumps(other))
    lines = compare_losses.reports_table(a, b)
    assert lines[0].startswith("| stage | logged steps in both |")  # (a report thins a long stage's losses)
    assert lines[2:5] == ["| stage1 | 2 | none | 0 | 30 / 30 |",
                          "| stage2 | 2 | 10 | 0.125 | 640 / 660 |",  # (step 20: b alone)
                          "| stage3 | 0 | - | nan | - / - |"]
    assert "| select | 7,14 / 7,14 | yes | 0 |" in lines
    assert lines[-1] == "| export | 2 | 8000 | 0.125 | 16000 / off |"  # (bases in numeric order, not as text)


H200, H100 = "NVIDIA H200, torch 2.11.0+cu130", "NVIDIA H100 80GB HBM3, torch 2.11.0+cu130"


def test_two_reports_name_their_machines_and_warn_when_they_differ(tmp_path):
    """A deterministic run repeats on one kind of GPU only: the comparison says when the two ran on other machines."""
    def report(*machines):
        return {"stages": {"stage1": {"losses": [[1, 2.0]], "machines": [machines[0]]},
                           "stage2": {"losses": [[1, 2.0]], "machines": list(machines)}},
                "selection": {"attention_layers": [7], "machines": [machines[0]]}}
    paths = {}
    for name, content in (("h200", report(H200)), ("again", report(H200)), ("h100", report(H100)),
                          ("both", report(H200, H100)), ("old", {"stages": {"stage1": {"losses": [[1, 2.0]]}}})):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(content))

    def ran_on(a, b):
        return next(line for line in compare_losses.reports_table(paths[a], paths[b]) if line.startswith("Ran on"))
    assert ran_on("h200", "again") == f"Ran on: {H200} / {H200}."
    assert ran_on("h200", "h100") == f"Ran on: {H200} / {H100}. Other machines. {compare_losses.NOT_ACROSS}"
    assert ran_on("h200", "both").endswith(compare_losses.NOT_ACROSS)  # stage 2 resumed on the H100
    assert ran_on("h200", "old") == f"Ran on: {H200} / not recorded."  # (no warning without both known)


def test_runs_on_other_machines_get_a_note_under_the_table(tmp_path):
    step = [{"step": 1, "loss": 2.0, "seconds": 0.5}]
    for name, machines, file in (("a", [H200], "done.json"), ("b", [H200], "done.json"),
                                 ("c", [H100], "wall_time.json"), ("d", None, "done.json")):
        write_run(tmp_path, name, step)
        saved = {"machines": machines} if machines else {}
        (tmp_path / name / "stages" / "stage2" / file).write_text(json.dumps(saved))
    lines = compare_losses.losses_table(tmp_path, ["a,b", "a,c", "a,d"])
    assert lines[2:5] == ["| a vs b | 1 | none | 0 | 0.500 / 0.500 |", "| a vs c | 1 | none | 0 | 0.500 / 0.500 |",
                          "| a vs d | 1 | none | 0 | 0.500 / 0.500 |"]
    # c is still running (its wall_time.json); d is from before machines were recorded: no note for it
    assert lines[5:] == ["", f"a vs c: other machines ({H200} / {H100}). {compare_losses.NOT_ACROSS}"]


def test_smoothed_losses_average_the_window_ending_at_each_logged_step():
    rows = {3: {"loss": 3.0}, 1: {"loss": 1.0}, 2: {"loss": 2.0}, 5: {"loss": 6.0}}  # (step 4 not logged)
    assert compare_losses.smoothed(rows, 2) == ([1, 2, 3, 5], [1.0, 1.5, 2.5, 4.5])
    assert compare_losses.smoothed(rows, 1) == ([1, 2, 3, 5], [1.0, 2.0, 3.0, 6.0])


def test_plot_draws_each_named_run_once_and_names_a_run_without_losses(tmp_path, capsys, monkeypatch):
    import matplotlib.axes
    from PIL import Image

    step = [{"step": s, "loss": 3.0 / s, "seconds": 0.3} for s in range(1, 30)]
    write_run(tmp_path, "a", step)
    write_run(tmp_path, "b", step[:10])
    drawn, plot = [], matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda ax, *xy, **kw: drawn.append((kw["label"], len(xy[0]))) or plot(ax, *xy, **kw))
    compare_losses.main(tmp_path, ["a,b", "b,a"], plot=tmp_path / "losses.png", window=5)
    assert capsys.readouterr().out.endswith(f"plot: {tmp_path / 'losses.png'}\n")
    assert drawn == [("a", 29), ("b", 10)]
    assert Image.open(tmp_path / "losses.png").format == "PNG"
    with pytest.raises(SystemExit, match="no losses to plot") as stop:
        compare_losses.plot_losses(tmp_path, ["a,missing"], "stage2", tmp_path / "other.png", 5)
    assert str(stop.value).startswith(str(tmp_path / "missing" / "stages" / "stage2" / "losses.jsonl"))
    assert not (tmp_path / "other.png").exists()
