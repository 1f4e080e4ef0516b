"""The conversion report's stage table (halo/report.py)."""

from hypenet.halo.report import write_report


def test_the_stage_table_has_every_stage_and_the_loading_in_pipeline_order(tmp_path):
    """The layer selection and the export have rows with their wall time beside the training stages (their time was in
    the total alone), and the loading a last row: the column adds up to the report's wall_time_s."""
    trained = {name: {"tokens": 1024, "steps": 4, "wall_time_s": seconds, "losses": [[1, 2.0], [4, 1.0]]}
               for name, seconds in (("stage1", 10.0), ("stage2", 30.0), ("stage3", 5.0))}
    report = {"wall_time_s": 58.5, "loading_time_s": 1.5, "stages": trained,
              "selection": {"strategy": "halo", "attention_layers": [1], "wall_time_s": 8.0},
              "export": {"wall_time_s": 4.0}}
    _, md = write_report(tmp_path, report)
    table = md.read_text().split("## Stages")[1].split("\n\n")[1].splitlines()[2:]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in table]
    assert [row[0] for row in cells] == ["stage1", "select", "stage2", "stage3", "export", "loading (teacher, data)"]
    assert sum(float(row[3]) for row in cells) == report["wall_time_s"]
    assert cells[1][1:3] == ["-", "-"] and cells[2][1:3] == ["1024", "4"]


def test_the_start_up_shares_the_loadings_row_where_it_was_measured(tmp_path):
    """With the start-up measured (startup_time_s: the `hypenet` command on Linux), the last row is the start-up and
    the loading, the column still adds up to wall_time_s, and the note says start-up is in it; without, it says not."""
    report = {"wall_time_s": 20.0, "loading_time_s": 1.5, "startup_time_s": 4.25,
              "stages": {"stage1": {"tokens": 1024, "steps": 4, "wall_time_s": 14.25, "losses": [[1, 2.0]]}}}
    text = write_report(tmp_path, report)[1].read_text()
    table = text.split("## Stages")[1].split("\n\n")[1].splitlines()[2:]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in table]
    assert cells[-1][0] == "start-up and loading (interpreter, imports, teacher, data)" and cells[-1][3] == "5.75"
    assert sum(float(row[3]) for row in cells) == report["wall_time_s"]
    assert "every run's start-up (from its process's start" in text and "are not in it" not in text
    del report["startup_time_s"]
    text = write_report(tmp_path, report)[1].read_text()
    assert "interpreter start and imports, a few seconds, are not in it" in text


def test_the_stage_table_names_each_stages_machines_in_the_order_they_ran_it(tmp_path):
    """A stage stopped on one machine and resumed on another shows both (a deterministic run repeats on the same kind
    of GPU only); the layer selection's and export's rows show theirs; a run from before machines were recorded shows
    "-"."""
    h200, h100 = "NVIDIA H200, torch 2.11.0+cu130", "NVIDIA H100 80GB HBM3, torch 2.11.0+cu130"
    report = {"wall_time_s": 30.0, "stages": {
        "stage1": {"tokens": 1024, "steps": 4, "wall_time_s": 10.0, "losses": [[1, 2.0]], "machines": [h200]},
        "stage2": {"tokens": 1024, "steps": 4, "wall_time_s": 15.0, "losses": [[1, 2.0]], "machines": [h200, h100]},
        "stage3": {"tokens": 1024, "steps": 4, "wall_time_s": 5.0, "losses": [[1, 2.0]]}},
        "selection": {"strategy": "halo", "attention_layers": [1], "wall_time_s": 0.0, "machines": [h200]}}
    text = write_report(tmp_path, report)[1].read_text()
    table = text.split("## Stages")[1].split("\n\n")[1].splitlines()
    cells = {row[0]: row for row in ([c.strip() for c in line.strip("|").split("|")] for line in table)}
    assert cells["stage"][-1] == "machine"
    assert cells["stage1"][-1] == h200 and cells["select"][-1] == h200
    assert cells["stage2"][-1] == f"{h200} then {h100}"
    assert cells["stage3"][-1] == "-"
    assert "repeats a run only on the same kind of GPU" in text
