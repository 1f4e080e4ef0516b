"""Reports and figures from crafted eval results."""

import io
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from hypenet.eval.niah import accuracy_interval, fisher_exact_p, summarize
from hypenet.eval.plots import _legend, plot_niah_heatmap, save_figure
from hypenet.eval.report import (
    compare,
    copy_tokens_right,
    niah_answers,
    niah_columns,
    niah_right,
    pooled_perplexity,
    render_markdown,
)


def niah_summary(accuracy_by_length, tasks=("single_1", "single_2")):
    records = []
    for task in tasks:
        for length, accuracy in accuracy_by_length.items():
            for depth in (0.0, 0.5, 1.0):
                for i in range(4):
                    records.append({"task": task, "context_len": length, "depth": depth, "correct": i < 4 * accuracy})
    return summarize(records)


def perplexity(ppls):
    edges = [0, 1024, 2048, 4096]
    return {"max_len": 4096, "docs": 2, "nll": 2.0, "ppl": sum(ppls) / len(ppls),
            "buckets": [{"start": a, "end": b, "tokens": 100 * (b - a) // 1024, "docs": 2, "nll": math.log(p), "ppl": p}
                        for a, b, p in zip(edges[:-1], edges[1:], ppls)]}


TEACHER = {
    "model": "teacher",
    "footprint": {"model_type": "llama", "parameters": 134_515_008, "layers": 30, "attention_layers": 30,
                  "kv_cache_bytes_per_token": 23040, "recurrent_state_bytes": 0, "trained_context_length": 2048},
    "perplexity": perplexity([20.0, 18.0, 40.0]),
    "niah": niah_summary({1024: 1.0, 2048: 1.0, 4096: 0.25}),
    "niah_yarn": niah_summary({4096: 0.75}),
}
STUDENT = {
    "model": "runs/student",
    "footprint": {"model_type": "hypenet", "parameters": 150_000_000, "layers": 30, "attention_layers": 7,
                  "kv_cache_bytes_per_token": 5376, "recurrent_state_bytes": 23 * 9 * 64 * 64 * 4,
                  "trained_context_length": 2048},
    "perplexity": perplexity([21.0, 18.9, 19.0]),
    "niah": niah_summary({1024: 1.0, 2048: 0.75, 4096: 0.75}),
}
BENCH = {"device": "cpu", "results": [
    {"model": "teacher", "context_len": 4096, "batch_size": 1, "ms_per_token": 12.5, "peak_mem_gib": 1.5,
     "status": "ok"},
    {"model": "student", "context_len": 4096, "batch_size": 1, "ms_per_token": 6.25, "peak_mem_gib": 0.75,
     "status": "ok"},
    {"model": "teacher", "context_len": 65536, "batch_size": 1, "status": "does not fit: out of memory"},
]}


def test_compare_report_rows_and_figures(tmp_path):
    markdown, figures = compare(TEACHER, STUDENT, BENCH, tmp_path)
    assert (tmp_path / "report.md").read_text() == markdown
    assert "| parameters | 134.5M | 150.0M |" in markdown
    assert "| KV cache per token (bf16) | 22.5 KiB | 5.2 KiB |" in markdown
    assert "| recurrent state per sequence (fp32) | 0 B | 3.2 MiB |" in markdown
    assert "| trained context | 2048 | 2048 (its teacher's) |" in markdown
    assert "| 0-1K | 20.00 | 21.00 | 1.050 | 100 |" in markdown
    assert "| 2K-4K | 40.00 | 19.00 | 0.475 | 200 |" in markdown
    # NIAH per task: teacher, teacher with YaRN (as-is inside its window), student.
    assert "| length | teacher | teacher + YaRN | student |" in markdown
    assert "### single_2" in markdown
    assert "| 4K | 25.0 | 75.0 | 75.0 |" in markdown
    assert "| 2K | 100.0 | 100.0 | 75.0 |" in markdown
    assert "| average | 75.0 | 91.7 | 83.3 |" in markdown
    assert "| 4K | 1 | ms_per_token | 12.5 | 6.25 |" in markdown
    assert "| 4K | 1 | peak_mem_gib | 1.5 | 0.75 |" in markdown
    assert "64K" not in markdown.split("## Speed and memory")[1]
    assert {f.name for f in figures} == {"niah_accuracy_vs_length.png", "perplexity_by_position.png"}
    for figure in figures:
        assert figure.read_bytes().startswith(b"\x89PNG")
        assert f"]({figure.name})" in markdown


def test_heatmap_png_written(tmp_path):
    path = plot_niah_heatmap(STUDENT["niah"]["tasks"]["single_1"], tmp_path / "sub" / "heat.png", "student single_1")
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 5000


def test_figures_are_saved_as_palette_pngs_that_look_like_matplotlibs(tmp_path):
    """save_figure writes a PNG of at most 256 colours: the same picture as matplotlib's RGBA PNG (mean difference
    under 1 of 255 per channel), in fewer bytes."""
    def figure():
        fig, ax = plt.subplots(figsize=(6, 4))
        for i in range(8):
            ax.plot(range(10), [x * (i + 1) for x in range(10)], marker="o", label=f"run {i}")
        ax.imshow(np.linspace(0, 1, 100).reshape(10, 10), cmap="RdYlGn", extent=(0, 3, 40, 70))
        ax.legend()
        ax.grid(alpha=0.3)
        ax.set_title("a plot")
        return fig

    rendered = io.BytesIO()
    fig = figure()
    fig.savefig(rendered, format="png", dpi=100)
    plt.close(fig)
    path = save_figure(figure(), tmp_path / "sub" / "plot.png", dpi=100)
    saved, reference = Image.open(path), Image.open(rendered)
    assert saved.mode == "P" and saved.size == reference.size == (600, 400)
    pixels = [np.asarray(image.convert("RGB"), dtype=float) for image in (saved, reference)]
    difference = np.abs(pixels[0] - pixels[1])
    assert difference.mean() < 1.0
    assert path.stat().st_size < len(rendered.getvalue())
    assert not plt.get_fignums()  # closed


@pytest.mark.parametrize("models", [4, 7])
def test_a_legend_of_many_models_goes_below_the_axes_and_the_figure_grows_to_hold_it(models):
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i in range(models):
        ax.plot([1, 2], [i, i], label=f"model {i}")
    _legend(fig, ax)
    fig.canvas.draw()
    legend, axes_box = ax.get_legend(), ax.get_window_extent()
    legend_box = legend.get_window_extent()
    assert len(legend.get_texts()) == models
    if models <= 4:
        assert tuple(fig.get_size_inches()) == (6.5, 4)
        assert axes_box.y0 <= legend_box.y0 and legend_box.y1 <= axes_box.y1  # inside the axes
    else:
        assert fig.get_size_inches()[1] == pytest.approx(4 + 0.2 * 4)  # 7 entries in two columns: 4 rows
        assert legend_box.y1 < axes_box.y0  # wholly below the axes
    plt.close(fig)


def test_report_without_scored_perplexity_draws_no_perplexity_figure(tmp_path):
    """`hypenet eval --ppl-docs 0` (NIAH only) leaves every bucket without tokens: the report is written with the
    NIAH figure and table alone instead of failing on a log-scaled plot of nothing."""
    empty = perplexity([1.0, 1.0, 1.0])
    empty.update(docs=0, nll=None, ppl=None)
    for bucket in empty["buckets"]:
        bucket.update(tokens=0, docs=0, nll=None, ppl=None)
    markdown, figures = compare(TEACHER, {**STUDENT, "perplexity": empty}, None, tmp_path)
    assert {f.name for f in figures} == {"niah_accuracy_vs_length.png", "perplexity_by_position.png"}
    from hypenet.eval.report import write_report
    _, alone = write_report([("student", {**STUDENT, "perplexity": empty})], tmp_path / "alone", "student")
    assert [f.name for f in alone] == ["niah_accuracy_vs_length.png"]
    assert "Perplexity" not in (tmp_path / "alone" / "report.md").read_text()


def uncounted(niah, num_samples):
    """NIAH results as written before cells counted their answers: only the total, num_samples."""
    tasks = {name: {**task, "by_length": {ln: {k: v for k, v in cell.items() if k != "samples"}
                                          for ln, cell in task["by_length"].items()}}
             for name, task in niah["tasks"].items()}
    return {**niah, "tasks": tasks, "num_samples": num_samples}


def test_average_over_tasks_shows_wilson_intervals_from_the_answers(tmp_path):
    """Each length's average over tasks carries its 95% interval and answer count (2 tasks x 3 depths x 4 samples =
    24 answers); results written before cells counted their answers get num_samples spread evenly over the cells,
    and none when it does not spread evenly."""
    markdown, _ = compare(TEACHER, STUDENT, None, tmp_path)
    average = markdown.split("### average over tasks")[1]
    low, high = accuracy_interval(0.75, 24)
    assert f"| 4K | 25.0 (12-45, n=24) | 75.0 ({100 * low:.0f}-{100 * high:.0f}, n=24) | 75.0 (" in average
    assert "| average | 75.0 (" in average and "n=72) |" in average
    assert "### single_2" in markdown and "| 4K | 25.0 | 75.0 | 75.0 |" in markdown.split("### average")[0]

    old = {**STUDENT, "niah": uncounted(STUDENT["niah"], 72)}
    assert niah_answers(niah_columns("s", old)[0][1]) == {"1024": 24, "2048": 24, "4096": 24, "average": 72}
    uneven = {**STUDENT, "niah": uncounted(STUDENT["niah"], 71)}
    assert niah_answers(niah_columns("s", uneven)[0][1])["average"] is None
    markdown, _ = compare(TEACHER, uneven, None, tmp_path / "uneven")
    average = markdown.split("### average over tasks")[1].split("###")[0]  # the table, not the sections after it
    assert "| 4K | 25.0 (12-45, n=24) | 75.0 (" in average and "| 75.0 |" in average


def test_pairs_of_models_compare_answers_right_on_the_cells_both_were_asked(tmp_path):
    """Each pair of NIAH columns: answers right on the task-length cells both measured, with Fisher's exact test;
    a model measured at fewer lengths is compared on those, and one whose answers are not counted is left out."""
    assert niah_right(STUDENT["niah"])[("single_1", "2048")] == (9, 12)  # 3 depths x 4 samples, 75% right
    short = {"model": "short", "niah": niah_summary({4096: 0.5})}
    markdown, _ = compare(TEACHER, STUDENT, None, tmp_path)
    pairs = markdown.split("### pairs of models")[1]
    assert "| model A | model B | lengths | all tasks | single_1 | single_2 |" in pairs
    # teacher: 12 + 12 + 3 right of 36 per task; student: 12 + 9 + 9
    both = f"54 / 60 of 72 (p = {fisher_exact_p(54, 72, 60, 72):.2g})"
    task = f"27 / 30 of 36 (p = {fisher_exact_p(27, 36, 30, 36):.2g})"
    assert f"| teacher | student | 1K, 2K, 4K | {both} | {task} | {task} |" in pairs
    # with YaRN the teacher is right 9 of 12 per task at 4K, and below its window it is the teacher as-is
    yarn = f"66 / 60 of 72 (p = {fisher_exact_p(66, 72, 60, 72):.2g})"
    assert f"| teacher + YaRN | student | 1K, 2K, 4K | {yarn} |" in pairs
    assert "| teacher | teacher + YaRN | 1K, 2K, 4K | 54 / 66 of 72 (p = " in pairs

    markdown = render_markdown([("student", STUDENT), ("short", short)])
    assert f"| student | short | 4K | 18 / 12 of 24 (p = {fisher_exact_p(18, 24, 12, 24):.2g}) |" in markdown
    # models asked different numbers of needles per cell: each count with its own total
    records = [{"task": "single_1", "context_len": 4096, "depth": depth, "correct": i < 5}
               for depth in (0.0, 0.5, 1.0) for i in range(8)]
    twice = {"model": "twice", "niah": summarize(records)}
    cell = f"9 of 12 / 15 of 24 (p = {fisher_exact_p(9, 12, 15, 24):.2g})"  # single_1 at 4K only
    markdown = render_markdown([("student", STUDENT), ("twice", twice)])
    assert f"| student | twice | 4K | {cell} | {cell} | - |" in markdown
    # one model: no pairs
    assert "### pairs of models" not in render_markdown([("student", STUDENT)])
    # answers not counted (results from before cells counted them, unevenly spread): nothing to compare
    unevenly = {**short, "niah": uncounted(short["niah"], 25)}
    assert "### pairs of models" not in render_markdown([("student", STUDENT), ("short", unevenly)])


def test_accuracy_per_needle_depth_over_the_lengths_every_model_was_measured_at():
    """Needles found only at the haystack's start (depth 0) by one model, everywhere but there by another; models
    measured at other lengths besides are compared at the lengths they share, each alone at its own."""
    def found(at_start: bool, lengths):
        return {"model": "m", "niah": summarize([
            {"task": "single_1", "context_len": length, "depth": depth, "correct": (depth == 0.0) == at_start}
            for length in lengths for depth in (0.0, 0.5, 1.0) for _ in range(2)])}
    markdown = render_markdown([("start", found(True, (1024, 2048))), ("rest", found(False, (2048,)))])
    depths = markdown.split("### single_1 by needle depth")[1].split("\n\n")[1]
    assert depths.splitlines() == ["| depth | start | rest |", "|---|---|---|", "| 0% | 100.0 | 0.0 |",
                                   "| 50% | 0.0 | 100.0 |", "| 100% | 0.0 | 100.0 |"]
    assert "averaged over the lengths every model was measured at (2K)." in markdown
    # a model right everywhere at 1K and only at the start at 2K, beside one measured at 2K alone: 2K only
    mixed = {"model": "m", "niah": summarize([
        {"task": "single_1", "context_len": length, "depth": depth, "correct": length == 1024 or depth == 0.0}
        for length in (1024, 2048) for depth in (0.0, 0.5, 1.0) for _ in range(2)])}
    depths = render_markdown([("mixed", mixed), ("rest", found(False, (2048,)))])
    assert "| 50% | 0.0 | 100.0 |" in depths.split("### single_1 by needle depth")[1]
    alone = render_markdown([("mixed", mixed)])
    assert "| 50% | 50.0 |" in alone.split("### single_1 by needle depth")[1]
    assert "averaged over the lengths measured." in alone
    apart = render_markdown([("mixed", mixed), ("far", found(False, (4096,)))])
    assert "| 50% | 50.0 | 100.0 |" in apart.split("### single_1 by needle depth")[1]
    assert "averaged over the lengths each model was measured at (they share none)." in apart
    # a cell right at one depth half the time, at another length always: the mean over lengths
    half = summarize([{"task": "single_1", "context_len": length, "depth": 0.5, "correct": length == 2048 or i == 0}
                      for length in (1024, 2048) for i in range(2)])
    markdown = render_markdown([("half", {"model": "h", "niah": half})])
    assert "| 50% | 75.0 |" in markdown.split("### single_1 by needle depth")[1]


def test_perplexity_within_and_past_the_trained_context_weighs_each_bucket_by_its_tokens(tmp_path):
    """Issue 6's perplexity target is the one within the teacher's trained context: the report pools the buckets
    inside it (token-weighted mean NLL, as one perplexity over those tokens) and those past it."""
    teacher_within = math.exp((100 * math.log(20.0) + 100 * math.log(18.0)) / 200)
    student_within = math.exp((100 * math.log(21.0) + 100 * math.log(18.9)) / 200)
    assert pooled_perplexity(TEACHER["perplexity"], 0, 2048) == (pytest.approx(teacher_within), 200)
    assert pooled_perplexity(STUDENT["perplexity"], 2048) == (pytest.approx(19.0), 200)
    assert pooled_perplexity(STUDENT["perplexity"], 4096) == (None, 0)
    markdown, _ = compare(TEACHER, STUDENT, None, tmp_path)
    ratio = student_within / teacher_within
    assert (f"| within the trained context (0-2K) | {teacher_within:.2f} | {student_within:.2f} | {ratio:.3f} | 200 |"
            in markdown)
    assert "| past it (2K-4K) | 40.00 | 19.00 | 0.475 | 200 |" in markdown
    # more than two models: each value after the first with its ratio to the first model's
    third = {**STUDENT, "perplexity": perplexity([20.0, 18.0, 20.0])}
    markdown = render_markdown([("teacher", TEACHER), ("student", STUDENT), ("other", third)])
    assert "| past it (2K-4K) | 40.00 | 19.00 (0.475x) | 20.00 (0.500x) | 200 |" in markdown
    # no row where the trained context is not a bucket's edge, or no model says what it is
    unknown = {**TEACHER, "footprint": {}}
    assert "trained context (" not in render_markdown([("teacher", unknown), ("student", {**STUDENT, "footprint": {}})])


def test_copy_totals_count_the_scored_tokens_of_every_length():
    copy = {"span": 32, "by_length": {
        "4096": {"samples": 16, "token_accuracy": 10 / 31, "control_samples": 16, "control_accuracy": 5 / 31},
        "8192": {"samples": 5, "token_accuracy": 0.4, "control_samples": 0, "control_accuracy": None},
        "16384": {"samples": 0, "token_accuracy": None, "control_samples": 0, "control_accuracy": None}}}
    assert copy_tokens_right(copy) == (160 + 62, 21 * 31)
    assert copy_tokens_right(copy, control=True) == (80, 16 * 31)
    markdown = render_markdown([("student", {**STUDENT, "copy": copy})])
    assert "| all lengths: tokens right | 222 of 651; without it 80 of 496 |" in markdown


def test_shares_of_several_values_are_not_counted_as_answers():
    """multivalue and multiquery score the share of the asked values found: no Fisher counts, no interval over them."""
    from hypenet.eval.niah import summarize

    records = [{"task": "multivalue", "context_len": 1024, "depth": 0.5, "correct": False, "recall": 0.5},
               {"task": "multivalue", "context_len": 1024, "depth": 0.5, "correct": False, "recall": 0.5},
               {"task": "single_1", "context_len": 1024, "depth": 0.5, "correct": True}]
    niah = summarize(records)
    assert niah["tasks"]["multivalue"]["accuracy"] == 0.5
    assert niah_right(niah) == {("single_1", "1024"): (1, 1)}
    assert niah_answers(niah) == {"1024": None, "average": None}
    single = summarize([r for r in records if r["task"] == "single_1"] * 2)
    assert niah_answers(single) == {"1024": 2, "average": 2}
