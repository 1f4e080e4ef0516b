"""The conversion report: report.json (the dict as is), report.md, and report.png (loss curves, layer scores, the
export's loss per logit-scaling base).

The report dict (every key optional; the pipeline fills what it has):

    {
      "teacher": str,                                # teacher spec or name
      "student_path": str,                           # exported checkpoint
      "stages": {                                    # in pipeline order
        "<name>": {"tokens": int, "steps": int, "wall_time_s": float,
                   "losses": [[step, loss], ...], ...any extra fields},
      },                                             # wall_time_s: seconds spent in the stage (building, training,
                                                     # saving), summed over every invocation that ran it, stopped and
                                                     # resumed ones included; loading_time_s: the loading (teacher,
                                                     # data) of the invocations that began with it, startup_time_s
                                                     # (where measured) their start-up before it (interpreter,
                                                     # imports); training_time_s: the training loop's alone
                                                     # (engine.TrainResult.wall_time)
      "selection": SelectionResult.to_dict(),        # attention_layers, strategy, scores, recall, commonsense,
                                                     # baseline, needle_attention (the teacher's, per layer, on the
                                                     # recall probes)
      "export": export_checkpoint(...)'s dict,       # path, logit_scaling_base, losses {"off"|"500"...: loss},
                                                     # losses_by_band {"16K-32K"...: {"off"|"500"...: loss}}, warnings,
                                                     # with the copy probe copy_losses and copy_probe
      "heldout": {"<metric>": float, ...},           # held-out evaluation numbers, e.g. {"teacher_loss": ..}
      "<other>": str | int | float,                  # listed at the top (e.g. teacher_parameters, wall_time_s:
    }                                                # the conversion's, every stage's, loading_time_s and
                                                     # startup_time_s summed)

Per-layer dicts may have int or str keys (JSON turns int keys into strings).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

REPORT_JSON, REPORT_MD, REPORT_PNG = "report.json", "report.md", "report.png"


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def _per_layer(values: dict | None) -> dict[int, float]:
    return {int(k): v for k, v in (values or {}).items()}


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]


def _stages_section(stages: dict, report: dict | None = None) -> list[str]:
    """The training stages' table, in pipeline order with the layer selection's and the export's rows (their wall
    time), and a last row of the start-up (where measured) and loading, so that the wall times add up to the report's
    `wall_time_s`."""
    report = report or {}
    untrained = {"select": report.get("selection"), "export": report.get("export")}
    order = [n for n in ("stage1", "select", "stage2", "stage3", "export") if n in stages or untrained.get(n)]
    rows = []
    for name in order + [n for n in stages if n not in order]:
        if name not in stages:
            info = untrained[name]
            rows.append([name, None, None, info.get("wall_time_s"), info.get("runs"), None, None, None,
                         _machines(info)])
            continue
        stage = stages[name]
        losses = stage.get("losses") or []
        # how it ran (older runs did not record it), with the ZeRO stage under DeepSpeed
        zero = f", ZeRO-{stage['zero_stage']}" if "zero_stage" in stage else ""
        ran_on = str(stage["processes"]) if "processes" in stage else None
        if ran_on and (stage["distributed"] != "NO" or zero):  # (accelerate's NO: one process, not distributed)
            ran_on += f" ({stage['distributed']}{zero})"
        if ran_on and "micro_batch_shrunk" in stage:  # out of memory at the first micro batch, on with the last
            ran_on += " micro batch {} -> {}".format(*stage["micro_batch_shrunk"])
        rows.append([
            name, stage.get("tokens"), stage.get("steps"), stage.get("wall_time_s"), stage.get("runs"),
            losses[0][1] if losses else None, losses[-1][1] if losses else None, ran_on, _machines(stage),
        ])
    startup = report.get("startup_time_s")
    if startup is not None:
        rows.append(["start-up and loading (interpreter, imports, teacher, data)", None, None,
                     round(startup + report.get("loading_time_s", 0.0), 2), None, None, None, None, None])
    elif report.get("loading_time_s") is not None:
        rows.append(["loading (teacher, data)", None, None, report["loading_time_s"], None, None, None, None, None])
    note = ("Wall time: the seconds spent in each stage (building, training, saving), summed over every run of it, "
            "those stopped and resumed included, and " + (
                "every run's start-up (from its process's start, or its launcher's: the interpreter, the imports) "
                "and loading of the teacher and data; together the report's `wall_time_s`." if startup is not None else
                "the loading of the teacher and data by every run; together the report's `wall_time_s` (a run's "
                "interpreter start and imports, a few seconds, are not in it: the `hypenet` command counts them "
                "where the system tells a process's start, on Linux)."))
    note += (" Runs: how many runs of the command did the stage's work, 1 unless it was stopped and resumed (a run "
             "killed before it saved its first step, or layer, is not counted)."
             " Machine: what ran the stage (the main process's GPU, or the CPU, and torch's version), each machine "
             "once when runs stopped and resumed ran on more than one; `deterministic: true` repeats a run only on the "
             "same kind of GPU.")
    return ["## Stages", ""] + _table(
        ["stage", "tokens", "steps", "wall time (s)", "runs", "first loss", "last loss", "processes", "machine"],
        rows) + ["", note]


def _machines(stage: dict) -> str | None:
    """A stage's machines as its row shows them (None for runs before they were recorded)."""
    return " then ".join(stage["machines"]) if stage.get("machines") else None


def _selection_section(selection: dict) -> list[str]:
    chosen = selection.get("attention_layers", [])
    lines = ["## Layer selection", "",
             f"Strategy `{selection.get('strategy')}`: attention kept in layers {chosen}.", ""]
    scores, recall, commonsense = (_per_layer(selection.get(k)) for k in ("scores", "recall", "commonsense"))
    if settings := selection.get("settings"):
        lines += ["Settings: " + ", ".join(f"{k} {_fmt(v)}" for k, v in settings.items()) + ".", ""]
    if baseline := selection.get("baseline"):
        lines += ["Unmodified teacher: " + ", ".join(f"{k} {_fmt(v)}" for k, v in baseline.items()) + ".", ""]
    looks = _per_layer(selection.get("needle_attention"))
    if looks:
        retrieving = sorted(sorted(looks, key=lambda i: -looks[i])[:len(chosen)])
        missed = [i for i in retrieving if i not in chosen]
        asked = ("NIAH-Single-2 prompts' needles" if selection.get("strategy") == "needle"
                 else "recall probes' needles")
        lines += [f"The teacher's attention finds the {asked} most in layers {retrieving} (needle attention: the "
                  "share of the asking position's attention on the asked needle, for the head that looks most at "
                  "it)" + (f"; of these, {missed} become recurrent layers." if missed else "."), ""]
    if scores:
        order = sorted(scores, key=lambda i: -scores[i])
        rows = [[i, "yes" if i in chosen else "", recall.get(i), commonsense.get(i), scores[i]]
                + ([looks.get(i)] if looks else []) for i in order]
        lines += _table(["layer", "attention", "recall R", "commonsense C", "score s"]
                        + (["needle attention"] if looks else []), rows)
    return lines


def _losses_by_band_table(losses: dict, by_band: dict, copy_losses: dict | None = None) -> list[str]:
    """The export's losses, overall, far-copy (when measured), then per position band, one row per base; the lowest
    in each column in bold."""
    columns = [losses, *([copy_losses] if copy_losses else []), *by_band.values()]
    lowest = [min((v for v in column.values() if v is not None), default=None) for column in columns]

    def cell(value, low) -> str:  # 6 digits: the bases' losses often differ only in the 4th
        return f"**{_fmt(value, 6)}**" if value is not None and value == low else _fmt(value, 6)

    rows = [[label, *(cell(column.get(label), low) for column, low in zip(columns, lowest))] for label in losses]
    copy_note = (" The far-copy loss is that of spans copied from further back than the training context "
                 "(`export.copy_probe`)." if copy_losses else "")
    return ["The base is chosen on the overall long-context loss (the lowest; with a tolerance the smallest base near "
            "it, or with the copy probe too the near base that copies best); the loss per position band (positions "
            f"of the predicted tokens, doublings from the first scored one) is a diagnostic.{copy_note} Bold: the "
            "lowest in each column.", "",
            *_table(["a", "long-context loss", *(["far-copy loss"] if copy_losses else []), *by_band], rows)]


def _export_section(export: dict) -> list[str]:
    from .export import scaling_label, tolerance_rule  # as the table labels a base: 16000, not 16,000

    chosen = scaling_label(export.get("logit_scaling_base"))
    how = ""
    if tolerance := export.get("tolerance"):
        lowest = export.get("lowest_loss_base")
        how = (f": {tolerance_rule(tolerance, bool(export.get('copy_losses')))} "
               f"(`export.logit_scaling_tolerance`; the lowest-loss base: {scaling_label(lowest)})")
    lines = ["## Export", "", f"Checkpoint `{export.get('path')}`; logit-scaling base a = {chosen}{how}.", ""]
    if probe := export.get("copy_probe"):
        lines += [f"Copy probe: {probe['copies']} spans of {probe['span']} tokens per document, each copied from "
                  "further back than the training context.", ""]
    if (losses := export.get("losses")) and (by_band := export.get("losses_by_band")):
        lines += _losses_by_band_table(losses, by_band, export.get("copy_losses"))
    elif losses:
        lines += _table(["a", "long-context loss"], [[label, loss] for label, loss in losses.items()])
    for note in export.get("warnings") or []:
        lines += ["", f"> Warning: {note}"]
    return lines


def _spread(values) -> bool:
    """Whether the positive values span more than 20x, so that a log axis shows the small ones."""
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) / min(positive) > 20


def report_figure(report: dict):
    """The report's figure, one panel each: every stage's loss curve, HALO's layer scores (the kept layers in red)
    and the export's held-out loss per logit-scaling base (the base written in red); None when there is nothing to
    draw."""
    stages = {n: s["losses"] for n, s in (report.get("stages") or {}).items() if s.get("losses")}
    selection = report.get("selection") or {}
    scores = _per_layer(selection.get("scores"))
    export = report.get("export") or {}
    export_losses = export.get("losses") or {}
    bases = {float(label): loss for label, loss in export_losses.items() if label != "off" and loss is not None}
    if not stages and not scores and not bases:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = len(stages) + bool(scores) + bool(bases)
    fig, axes = plt.subplots(panels, 1, figsize=(8, 3 * panels), squeeze=False)
    axes = iter(axes[:, 0])
    for name, losses in stages.items():
        ax = next(axes)
        steps, values = zip(*losses)
        ax.plot(steps, values, marker="o" if len(steps) == 1 else None)  # (a line of one point draws nothing)
        ax.set(title=f"{name} loss", xlabel="step", ylabel="loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if min(values) > 0 and _spread(values):
            ax.set_yscale("log")
    if scores:
        ax = next(axes)
        chosen = set(selection.get("attention_layers", []))
        layers = sorted(scores)
        ax.bar(layers, [scores[i] for i in layers], color=["tab:red" if i in chosen else "tab:gray" for i in layers])
        ax.set(title="HALO layer scores (red: attention kept)", xlabel="layer", ylabel="score s")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if _spread(scores.values()):  # linear below the smallest positive score, so that a score of 0 has a place
            ax.set_yscale("symlog", linthresh=min(v for v in scores.values() if v > 0))
    if bases:
        ax = next(axes)
        xs = sorted(bases)
        ax.plot(xs, [bases[x] for x in xs], marker="o", color="tab:blue")
        if (off := export_losses.get("off")) is not None:
            ax.axhline(off, color="tab:gray", linestyle="--", label="logit scaling off")
            ax.legend()
        written = export.get("logit_scaling_base")
        if written is not None and float(written) in bases:
            ax.plot([float(written)], [bases[float(written)]], marker="o", markersize=9, color="tab:red",
                    linestyle="none")
        ax.set_xscale("log")
        ax.set(title="export: held-out long-context loss per logit-scaling base (red: the base written)",
               xlabel="logit-scaling base a", ylabel="loss")
    fig.tight_layout()
    return fig


def write_report(out_dir: str | Path, report: dict) -> tuple[Path, Path]:
    """Write report.json, report.md and (when there is something to draw) report.png into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / REPORT_JSON, out_dir / REPORT_MD
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")

    lines = ["# HALO conversion report", ""]
    summary = [f"- {key}: {_fmt(value)}" for key, value in report.items() if isinstance(value, (str, int, float))]
    if summary:
        lines += summary + [""]
    if report.get("stages"):
        lines += _stages_section(report["stages"], report) + [""]
    for key, section in (("selection", _selection_section), ("export", _export_section)):
        if report.get(key):
            lines += section(report[key]) + [""]
    if heldout := report.get("heldout"):
        lines += ["## Held-out evaluation", ""] + _table(["metric", "value"], list(map(list, heldout.items()))) + [""]
    if (fig := report_figure(report)) is not None:
        from ..eval.plots import save_figure

        save_figure(fig, out_dir / REPORT_PNG, dpi=100)
        lines += [f"![loss curves, layer scores and the export's loss per logit-scaling base]({REPORT_PNG})", ""]
    md_path.write_text("\n".join(lines))
    return json_path, md_path


__all__ = ["report_figure", "write_report"]
