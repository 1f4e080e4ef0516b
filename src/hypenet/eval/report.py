"""Markdown + PNG reports of eval results: one model (`hypenet eval`) or a teacher and its student side by side."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ..machine import label as machine_line
from ..units import byte_size, length_label
from .niah import accuracy_interval, fisher_exact_p, scored_right_or_wrong
from .niah_forced import DEFAULT_ANSWER
from .plots import plot_accuracy_vs_length, plot_needle_attention, plot_perplexity_by_bucket

_MISSING = "-"


def niah_columns(label: str, results: dict) -> list[tuple[str, dict]]:
    """NIAH result columns of one model: as-is, and with YaRN when it was also run that way."""
    columns = []
    as_is, yarn = _with_cell_samples(results.get("niah")), _with_cell_samples(results.get("niah_yarn"))
    if as_is:
        columns.append((label, as_is))
    if yarn:
        columns.append((f"{label} + YaRN", _with_as_is_below_trained_window(as_is, yarn)))
    return columns


def _with_cell_samples(niah: dict | None) -> dict | None:
    """`niah` with every task-length cell's number of answers (`samples`). Results written before cells counted
    them get `num_samples` spread evenly over their cells when it divides evenly (every grid cell holds the same
    number of samples), and no count otherwise."""
    if not niah:
        return niah
    cells = [cell for task in niah["tasks"].values() for cell in task["by_length"].values()]
    if all("samples" in cell for cell in cells) or not cells or niah.get("num_samples", 0) % len(cells):
        return niah
    per_cell = niah["num_samples"] // len(cells)
    tasks = {name: {**task, "by_length": {ln: {**cell, "samples": per_cell} for ln, cell in task["by_length"].items()}}
             for name, task in niah["tasks"].items()}
    return {**niah, "tasks": tasks}


def niah_answers(niah: dict) -> dict[str, int | None]:
    """Answers behind each length's average over tasks (None where a cell has no count), and "average": all of them."""
    answers: dict[str, int | None] = {}
    for name, task in niah["tasks"].items():
        for ln, cell in task["by_length"].items():
            counted = answers.get(ln, 0)
            binary = scored_right_or_wrong(name)  # shares of several values found are not counts of answers
            answers[ln] = None if counted is None or "samples" not in cell or not binary else counted + cell["samples"]
    counts = list(answers.values())
    answers["average"] = None if None in counts or not counts else sum(counts)
    return answers


def niah_intervals(niah: dict) -> dict[str, tuple[float, float, int]]:
    """(low, high, answers): the 95% interval of each length's average over tasks and of the overall "average", where
    the answers behind it are counted."""
    accuracies = {**niah["by_length"], "average": niah.get("average")}
    return {key: (*accuracy_interval(accuracies[key], n), n) for key, n in niah_answers(niah).items()
            if n and accuracies.get(key) is not None}


def _with_as_is_below_trained_window(as_is: dict | None, yarn: dict) -> dict:
    """YaRN runs only beyond the trained window; below it, the model is unchanged, so show the as-is accuracy."""
    if not as_is:
        return yarn
    tasks = {}
    for task, result in as_is["tasks"].items():
        by_length = {**result["by_length"], **yarn["tasks"].get(task, {}).get("by_length", {})}
        tasks[task] = {"by_length": by_length, "accuracy": _mean(v["accuracy"] for v in by_length.values())}
    by_length = {**as_is["by_length"], **yarn["by_length"]}
    return {"tasks": tasks, "by_length": by_length, "average": _mean(by_length.values())}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _pct(value: float | None) -> str:
    return _MISSING if value is None else f"{100 * value:.1f}"


def _bytes(value: int | None) -> str:
    return _MISSING if value is None else byte_size(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _base(base) -> str:
    return _MISSING if base is None else base if isinstance(base, str) else f"{base:g}"


def _models_section(runs: Sequence[tuple[str, dict]]) -> list[str]:
    footprints = [(label, r.get("footprint", {})) for label, r in runs]
    fields = [
        ("parameters", lambda f: f"{f['parameters'] / 1e6:.1f}M" if "parameters" in f else _MISSING),
        ("layers (attention)", lambda f: f"{f.get('layers', _MISSING)} ({f.get('attention_layers', _MISSING)})"),
        ("KV cache per token (bf16)", lambda f: _bytes(f.get("kv_cache_bytes_per_token"))),
        ("recurrent state per sequence (fp32)", lambda f: _bytes(f.get("recurrent_state_bytes"))),
        # (a HypeNet keeps its teacher's max_position_embeddings, not the length its stage 3 trained at)
        ("trained context", lambda f: f"{f.get('trained_context_length', _MISSING)}"
                                      + (" (its teacher's)" if f.get("model_type") == "hypenet" else "")),
        ("attention logit-scaling base (HyPE)", lambda f: _base(f.get("logit_scaling_base"))),
    ]
    rows = [[name] + [render(f) for _, f in footprints] for name, render in fields]
    machines = [r.get("machine") for _, r in runs]
    if any(machines):  # (results from before it was recorded have none)
        rows.append(["evaluated on"] + [machine_line(m) if m else _MISSING for m in machines])
    return ["## Models", ""] + _table(["", *[label for label, _ in runs]], rows)


def _scored_perplexity(results: dict) -> bool:
    """Whether an evaluation scored any token for perplexity (`hypenet eval --ppl-docs 0` scores none)."""
    return bool(results.get("perplexity")) and any(b["ppl"] is not None for b in results["perplexity"]["buckets"])


def pooled_perplexity(perplexity: dict, start: int, end: int | None = None) -> tuple[float | None, int]:
    """(perplexity, tokens) over the buckets that lie within [start, end) (end None: to the last), each bucket's
    mean negative log-likelihood weighted by its tokens, as a perplexity over all of them would be."""
    buckets = [b for b in perplexity["buckets"] if b["start"] >= start and (end is None or b["end"] <= end)
               and b.get("nll") is not None and b["tokens"]]
    tokens = sum(b["tokens"] for b in buckets)
    if not tokens:
        return None, 0
    return math.exp(sum(b["nll"] * b["tokens"] for b in buckets) / tokens), tokens


def _window_rows(ppl_runs: Sequence[tuple[str, dict]], window: int | None) -> list[list]:
    """Rows for the positions within the shortest trained context of the compared models and past it (issue 6's
    perplexity target is the one within the teacher's window); after the first model's column, each value with its
    ratio to the first model's (in the ratio column when there are two models)."""
    if not window or not any(b["start"] == window for _, p in ppl_runs for b in p["buckets"]):
        return []
    end = max(b["end"] for _, p in ppl_runs for b in p["buckets"])
    rows = []
    for name, (start, stop) in ((f"within the trained context (0-{length_label(window)})", (0, window)),
                                (f"past it ({length_label(window)}-{length_label(end)})", (window, None))):
        pooled = [pooled_perplexity(p, start, stop) for _, p in ppl_runs]
        first = pooled[0][0]
        cells = []
        for i, (value, _) in enumerate(pooled):
            cell = _MISSING if value is None else f"{value:.2f}"
            if i and len(ppl_runs) > 2 and value is not None and first:
                cell += f" ({value / first:.3f}x)"
            cells.append(cell)
        row = [name, *cells]
        if len(ppl_runs) == 2:
            row.append(_MISSING if None in (first, pooled[1][0]) else f"{pooled[1][0] / first:.3f}")
        rows.append(row + [max(tokens for _, tokens in pooled)])
    return rows


def _perplexity_section(runs: Sequence[tuple[str, dict]]) -> list[str]:
    scored = [(label, r) for label, r in runs if _scored_perplexity(r)]
    if not scored:
        return []
    ppl_runs = [(label, r["perplexity"]) for label, r in scored]
    window = min((w for _, r in scored if (w := r.get("footprint", {}).get("trained_context_length"))), default=None)
    edges = sorted({(b["start"], b["end"]) for _, p in ppl_runs for b in p["buckets"]})
    header = ["positions", *[label for label, _ in ppl_runs], "tokens"]
    if len(ppl_runs) == 2:
        header.insert(3, f"{ppl_runs[1][0]} / {ppl_runs[0][0]}")
    rows = []
    for start, end in edges:
        cells = [next((b for b in p["buckets"] if (b["start"], b["end"]) == (start, end)), None) for _, p in ppl_runs]
        values = [c["ppl"] if c else None for c in cells]
        row = [f"{length_label(start)}-{length_label(end)}", *[_MISSING if v is None else f"{v:.2f}" for v in values]]
        if len(ppl_runs) == 2:
            row.append(_MISSING if None in values else f"{values[1] / values[0]:.3f}")
        row.append(max((c["tokens"] for c in cells if c), default=0))
        rows.append(row)
    overall = ["all", *[_MISSING if p["ppl"] is None else f"{p['ppl']:.2f}" for _, p in ppl_runs]]
    if len(ppl_runs) == 2:
        a, b = ppl_runs[0][1]["ppl"], ppl_runs[1][1]["ppl"]
        overall.append(_MISSING if None in (a, b) else f"{b / a:.3f}")
    overall.append("")
    return ["## Perplexity by token position", ""] + _table(header, rows + [overall] + _window_rows(ppl_runs, window))


def _niah_section(columns: Sequence[tuple[str, dict]]) -> list[str]:
    if not columns:
        return []
    labels = [label for label, _ in columns]
    lines = ["## NIAH accuracy (%)", ""]
    tasks = sorted({t for _, n in columns for t in n["tasks"]})
    for task in tasks:
        results = [n["tasks"].get(task, {}) for _, n in columns]
        lengths = sorted({int(ln) for r in results for ln in r.get("by_length", {})})
        rows = [[length_label(ln), *[_pct(r.get("by_length", {}).get(str(ln), {}).get("accuracy")) for r in results]]
                for ln in lengths]
        rows.append(["average", *[_pct(r.get("accuracy")) for r in results]])
        lines += [f"### {task}", ""] + _table(["length", *labels], rows)
    lengths = sorted({int(ln) for _, n in columns for ln in n["by_length"]})
    intervals = [niah_intervals(n) for _, n in columns]
    rows = [[length_label(ln), *[_pct_with_interval(n["by_length"].get(str(ln)), i.get(str(ln)))
                                 for (_, n), i in zip(columns, intervals)]] for ln in lengths]
    rows.append(["average", *[_pct_with_interval(n.get("average"), i.get("average"))
                              for (_, n), i in zip(columns, intervals)]])
    lines += ["### average over tasks", ""]
    if any(intervals):
        lines += ["In brackets: the 95% interval (Wilson score) from the number of answers behind the average, which "
                  "counts each answer once (tasks weigh alike when they hold as many answers).", ""]
    return lines + _table(["length", *labels], rows) + _pairs_section(columns) + _depth_section(columns)


def _depth_section(columns: Sequence[tuple[str, dict]]) -> list[str]:
    """Per task, each model's accuracy per needle depth, averaged over the lengths every model was measured at (each
    model's own lengths when they share none): a model measured at 4K-64K beside one measured at 64K alone is
    compared at 64K."""
    labels = [label for label, _ in columns]
    measured = [{int(length) for result in niah["tasks"].values()
                 for length, cell in result.get("by_length", {}).items() if cell.get("by_depth")}
                for _, niah in columns]
    shared = set.intersection(*measured) if measured else set()
    lines = []
    for task in sorted({t for _, n in columns for t in n["tasks"]}):
        by_model = []
        for _, niah in columns:
            by_depth: dict[float, list[float]] = {}
            for length, cell in niah["tasks"].get(task, {}).get("by_length", {}).items():
                if shared and int(length) not in shared:
                    continue
                for depth, accuracy in cell.get("by_depth", {}).items():
                    by_depth.setdefault(float(depth), []).append(accuracy)
            by_model.append({depth: _mean(values) for depth, values in by_depth.items()})
        depths = sorted({depth for accuracies in by_model for depth in accuracies})
        if depths:
            rows = [[f"{100 * depth:g}%", *[_pct(accuracies.get(depth)) for accuracies in by_model]]
                    for depth in depths]
            lines += [f"### {task} by needle depth", ""] + _table(["depth", *labels], rows)
    if not lines:
        return []
    if not shared:
        over = "the lengths each model was measured at (they share none)"
    elif all(lengths == shared for lengths in measured):
        over = "the lengths measured"
    else:
        over = f"the lengths every model was measured at ({', '.join(length_label(n) for n in sorted(shared))})"
    return ["Accuracy (%) per needle depth (0% = the haystack's start, 100% = its end, before the question), averaged "
            f"over {over}.", ""] + lines


def niah_right(niah: dict) -> dict[tuple[str, str], tuple[int, int]]:
    """(task, length) -> (answers right, answers) of each cell whose answers are counted and whose accuracy makes a
    whole number of them (a mean over depths holding as many answers each)."""
    counts = {}
    for task, result in niah["tasks"].items():
        for length, cell in result["by_length"].items():
            if "samples" in cell and cell.get("accuracy") is not None and scored_right_or_wrong(task):
                right = cell["accuracy"] * cell["samples"]
                if abs(right - round(right)) < 1e-6:
                    counts[(task, length)] = (round(right), cell["samples"])
    return counts


def _pairs_section(columns: Sequence[tuple[str, dict]]) -> list[str]:
    """Each pair of NIAH columns on the cells both were asked: answers right, and Fisher's exact test."""
    counted = [(label, niah_right(n)) for label, n in columns]
    tasks = sorted({task for _, counts in counted for task, _ in counts})
    rows = []
    for i, (label_a, a) in enumerate(counted):
        for label_b, b in counted[i + 1:]:
            shared = sorted(set(a) & set(b), key=lambda cell: (cell[0], int(cell[1])))
            if not shared:
                continue
            lengths = ", ".join(length_label(ln) for ln in sorted({int(ln) for _, ln in shared}))
            rows.append([label_a, label_b, lengths, _pair_cell(a, b, shared),
                         *[_pair_cell(a, b, [c for c in shared if c[0] == task]) for task in tasks]])
    if not rows:
        return []
    return ["### pairs of models", "",
            "Answers right of those both models were asked (the task-length cells measured for both), and in brackets "
            "the two-sided p-value of Fisher's exact test that both answer right at the same rate: how often the "
            "needles alone would split the right answers this unevenly or more. It counts the needles' chance, not a "
            "training seed's: two runs of one recipe can differ by more.", ""
            ] + _table(["model A", "model B", "lengths", "all tasks", *tasks], rows)


def _pair_cell(a: dict, b: dict, cells: Sequence[tuple[str, str]]) -> str:
    if not cells:
        return _MISSING
    right_a, answers_a = (sum(a[c][i] for c in cells) for i in (0, 1))
    right_b, answers_b = (sum(b[c][i] for c in cells) for i in (0, 1))
    p = fisher_exact_p(right_a, answers_a, right_b, answers_b)
    if answers_a != answers_b:  # e.g. a teacher with 2 samples per cell beside a student with 6
        return f"{right_a} of {answers_a} / {right_b} of {answers_b} (p = {p:.2g})"
    return f"{right_a} / {right_b} of {answers_a} (p = {p:.2g})"


def _pct_with_interval(accuracy: float | None, interval: tuple[float, float, int] | None) -> str:
    if accuracy is None or interval is None:
        return _pct(accuracy)
    low, high, answers = interval
    return f"{100 * accuracy:.1f} ({100 * low:.0f}-{100 * high:.0f}, n={answers})"


def _copy_runs(runs: Sequence[tuple[str, dict]]) -> list[tuple[str, dict]]:
    return [(label, r["copy"]) for label, r in runs if r.get("copy")]


def copy_tokens_right(copy: dict, control: bool = False) -> tuple[int, int]:
    """(right, scored): copied tokens predicted right over all lengths of an `evaluate_copy` result (span - 1 scored
    per sample), or with control=True the same of its control samples."""
    accuracy, samples = ("control_accuracy", "control_samples") if control else ("token_accuracy", "samples")
    cells = [c for c in copy["by_length"].values() if c.get(accuracy) is not None and c.get(samples)]
    scored = [c[samples] * (copy["span"] - 1) for c in cells]
    return round(sum(c[accuracy] * n for c, n in zip(cells, scored))), sum(scored)


def _copy_total(copy: dict) -> str:
    right, scored = copy_tokens_right(copy)
    control, control_scored = copy_tokens_right(copy, control=True)
    return f"{right} of {scored}" + (f"; without it {control} of {control_scored}" if control_scored else "")


def _copy_section(runs: Sequence[tuple[str, dict]]) -> list[str]:
    """`evaluate_copy` results: per length, token accuracy / second half / last token (%) of each model."""
    scored = _copy_runs(runs)
    if not scored:
        return []
    lengths = sorted({int(ln) for _, c in scored for ln in c["by_length"]})
    rows = []
    for length in lengths:
        cells = [c["by_length"].get(str(length), {}) for _, c in scored]
        rows.append([length_label(length), *[
            " / ".join(_pct(cell.get(key)) for key in ("token_accuracy", "second_half", "last_token"))
            + f" ({cell.get('samples', 0)})"
            + (f"; without it {_pct(cell['control_accuracy'])}" if cell.get("control_accuracy") is not None else "")
            if cell else _MISSING for cell in cells]])
    rows.append(["all lengths: tokens right", *[_copy_total(c) for _, c in scored]])
    spans = sorted({c["span"] for _, c in scored})
    return (["## Copying a span read earlier (%)", "",
             "Copied tokens predicted right: all / in the copy's second half / the last one (samples); copies of "
             f"{', '.join(map(str, spans))} tokens from the first quarter of a held-out document "
             "(`hypenet.eval.copying`). \"without it\": all, with the original replaced by another document's tokens "
             "(the control: what the model predicts without having read the span).", ""]
            + _table(["length", *[label for label, _ in scored]], rows))


def _forced_section(runs: Sequence[tuple[str, dict]]) -> list[str]:
    """`summarize_forced` results (`niah_forced`): per task and length, start / exact / rest (%) and the first value
    token's median rank, of each model."""
    scored = [(label, r["niah_forced"]) for label, r in runs if r.get("niah_forced")]
    if not scored:
        return []
    forms = " / ".join(sorted({repr(f.get("answer", DEFAULT_ANSWER)) for _, f in scored}))
    lines = ["## NIAH answers given (teacher forcing, %)", "",
             f"With the answer {forms} appended to each NIAH prompt, the model's greedy prediction of each of its "
             "tokens (`hypenet.eval.niah_forced`): start = it begins the value / exact = it predicts every answer "
             "token / rest = the value's later tokens predicted right, given the true ones before them; in brackets "
             "the median rank of the value's first token (0 = the model's choice) and the samples.", ""]
    for task in sorted({t for _, f in scored for t in f["tasks"]}):
        results = [f["tasks"].get(task, {}) for _, f in scored]
        lengths = sorted({int(ln) for r in results for ln in r.get("by_length", {})})
        rows = [[length_label(ln), *[_forced_cell(r.get("by_length", {}).get(str(ln))) for r in results]]
                for ln in lengths]
        rows.append(["all", *[_forced_cell(r or None) for r in results]])
        lines += [f"### {task}", ""] + _table(["length", *[label for label, _ in scored]], rows)
        firsts = [f"{label}: " + ", ".join(f"`{token!r}` {n}" for token, n in r["choices"])
                  for (label, _), r in zip(scored, results) if r.get("choices")]
        if firsts:
            lines += ["First token each model would write (samples, all lengths): " + "; ".join(firsts) + ".", ""]
    return lines


def _forced_cell(cell: dict | None) -> str:
    if not cell:
        return _MISSING
    return (" / ".join(_pct(cell.get(key)) for key in ("start", "exact", "rest"))
            + f" (rank {cell['first_rank_median']:g}, n={cell['samples']})")


def _lm_eval_section(runs: Sequence[tuple[str, dict]]) -> list[str]:
    scored = [(label, r["lm_eval"]) for label, r in runs if r.get("lm_eval")]
    if not scored:
        return []
    keys = sorted({(task, metric) for _, s in scored for task, metrics in s.items() for metric in metrics})
    rows = [[task, metric, *[_number(s.get(task, {}).get(metric)) for _, s in scored]] for task, metric in keys]
    return ["## lm-evaluation-harness", ""] + _table(["task", "metric", *[label for label, _ in scored]], rows)


def _number(value) -> str:
    if value is None:
        return _MISSING
    return f"{value:.4g}" if isinstance(value, float) else str(value)


_BENCH_KEYS = ("model", "context_len", "batch_size")


def _bench_section(bench: dict | list | None) -> list[str]:
    """Rows of `hypenet bench` (bench.json, or its "results" list): {"model", "context_len", "batch_size",
    <metric>: number, "status"}; every numeric metric of the rows that ran ("ok") is shown per context and batch."""
    if not bench:
        return []
    rows_in = [r for r in (bench["results"] if isinstance(bench, dict) else bench) if r.get("status", "ok") == "ok"]
    models = list(dict.fromkeys(r["model"] for r in rows_in))
    metrics = list(dict.fromkeys(k for r in rows_in for k, v in r.items()
                                 if k not in _BENCH_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)))
    cases = sorted({(r.get("context_len") or 0, r.get("batch_size") or 1) for r in rows_in})
    rows = []
    for context, batch in cases:
        for metric in metrics:
            values = [next((r.get(metric) for r in rows_in if r["model"] == m and (r.get("context_len") or 0) == context
                            and (r.get("batch_size") or 1) == batch), None) for m in models]
            if any(v is not None for v in values):
                rows.append([length_label(context), batch, metric, *map(_number, values)])
    return ["## Speed and memory", ""] + _table(["context", "batch", "metric", *models], rows)


def render_markdown(runs: Sequence[tuple[str, dict]], bench: dict | list | None = None, title: str = "Evaluation",
                    figures: Sequence[Path] = ()) -> str:
    """A report of one or more models' eval results (label, results.json content)."""
    columns = [c for label, r in runs for c in niah_columns(label, r)]
    lines = [f"# {title}", ""]
    for label, results in runs:
        lines.append(f"- **{label}**: `{results.get('model', label)}`")
    lines.append("")
    lines += _models_section(runs)
    lines += _perplexity_section(runs)
    lines += _niah_section(columns)
    lines += _forced_section(runs)
    lines += _copy_section(runs)
    lines += _lm_eval_section(runs)
    lines += _bench_section(bench)
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figures] + [""]
    return "\n".join(lines)


def write_figures(runs: Sequence[tuple[str, dict]], out_dir: str | Path, prefix: str = "") -> list[Path]:
    """Accuracy-vs-length and perplexity-vs-position plots of every model on one figure each."""
    out_dir = Path(out_dir)
    figures = []
    columns = [c for label, r in runs for c in niah_columns(label, r)]
    if columns:
        intervals = {label: {ln: (low, high) for ln, (low, high, _) in niah_intervals(n).items() if ln != "average"}
                     for label, n in columns}
        title = "NIAH accuracy (average over tasks)" + (", 95% intervals" if any(intervals.values()) else "")
        figures.append(plot_accuracy_vs_length({label: n["by_length"] for label, n in columns},
                                               out_dir / f"{prefix}niah_accuracy_vs_length.png", title,
                                               intervals=intervals))
    ppl = {label: r["perplexity"]["buckets"] for label, r in runs if _scored_perplexity(r)}
    if ppl:
        figures.append(plot_perplexity_by_bucket(ppl, out_dir / f"{prefix}perplexity_by_position.png",
                                                 "Perplexity by token position"))
    def by_length(key: str) -> dict[str, dict[str, float]]:  # label -> {length: that accuracy}, where measured
        return {label: {ln: cell[key] for ln, cell in c["by_length"].items() if cell.get(key) is not None}
                for label, c in _copy_runs(runs)}

    copies, controls = by_length("token_accuracy"), by_length("control_accuracy")
    if copies:
        figures.append(plot_accuracy_vs_length(copies, out_dir / f"{prefix}copy_accuracy_vs_length.png",
                                               "Copying a span read earlier", ylabel="copied tokens right (%)",
                                               controls=controls, control_label="without the original"))
    attention = {label: r["needle_attention"] for label, r in runs if r.get("needle_attention")}
    if attention:
        figures.append(plot_needle_attention(attention, out_dir / f"{prefix}needle_attention.png",
                                             "Where the last token's attention goes"))
    return figures


def write_report(runs: Sequence[tuple[str, dict]], out_dir: str | Path, title: str, bench: dict | list | None = None,
                 extra_figures: Sequence[Path] = ()) -> tuple[str, list[Path]]:
    """Write report.md and its figures to out_dir: (markdown, PNG paths)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = write_figures(runs, out_dir) + list(extra_figures)
    markdown = render_markdown(runs, bench, title=title, figures=figures)
    (out_dir / "report.md").write_text(markdown)
    return markdown, figures


def compare(teacher_results: dict, student_results: dict, bench: dict | list | None = None,
            out_dir: str | Path | None = None,
            labels: tuple[str, str] = ("teacher", "student")) -> tuple[str, list[Path]]:
    """Teacher vs student report: (markdown, PNG paths). With out_dir, also writes report.md and the PNGs there."""
    runs = [(labels[0], teacher_results), (labels[1], student_results)]
    title = f"{labels[0]} vs {labels[1]}"
    if out_dir is None:
        return render_markdown(runs, bench, title=title), []
    return write_report(runs, out_dir, title, bench)
