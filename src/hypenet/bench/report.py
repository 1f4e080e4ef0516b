"""Benchmark report: bench.json (everything), bench.md (tables + the issue's targets), bench_decode.png (plot)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from ..eval.plots import save_figure  # noqa: E402
from ..units import length_label  # noqa: E402
from .memory import UNITS, measures_peak_memory, peak_memory_note  # noqa: E402

K = 1024
COLUMNS = [
    ("model", "model", None), ("batch_size", "batch", None), ("context_len", "context", "ctx"),
    ("prefill_s", "prefill s", ".3g"), ("ms_per_token", "ms/token", ".3g"), ("tokens_per_s", "tokens/s", ".4g"),
    ("floor_ms", "floor ms", ".3g"), ("ratio_to_floor", "x floor", ".2f"), ("peak_mem_gib", "peak GiB", ".1f"),
    ("kv_state_gib", "KV+state GiB", ".2f"), ("status", "status", None),
]


def _cell(value, fmt):
    if value is None:
        return ""
    if fmt == "ctx":
        return length_label(value)
    if fmt and isinstance(value, (int, float)):
        return format(value, fmt)
    return str(value)


def _find(rows, **where):
    return next((r for r in rows if all(r.get(k) == v for k, v in where.items()) and r.get("status") == "ok"), None)


def issue_targets(results: list[dict]) -> list[dict]:
    """The targets of the fast-inference issue, checked on whatever rows this run has (batch 1)."""
    rows = [r for r in results if r.get("batch_size") == 1]
    hypenet = next((r["shape"] for r in rows if r.get("kind") == "hypenet"), None)
    teacher = next((r["shape"] for r in rows if r.get("kind") == "teacher"), None)
    targets = []

    def add(name, value, goal, passed, note=""):
        targets.append({"target": name, "value": value, "goal": goal, "met": passed, "note": note})

    for context in (128 * K, 512 * K, 1024 * K):
        row = _find(rows, shape=hypenet, engine="fast", context_len=context)
        if row:
            ratio = row["ratio_to_floor"]
            add(f"{hypenet} decode at {length_label(context)}: time per token / floor",
                f"{row['ms_per_token']:.3g} ms / {row['floor_ms']:.3g} ms = {ratio:.2f}x", "<= 1.25x", ratio <= 1.25)
    fast_128, slow_128 = (_find(rows, shape=hypenet, engine="fast", context_len=128 * K),
                          _find(rows, shape=teacher, engine="transformers", context_len=128 * K))
    if fast_128 and slow_128:
        speedup = slow_128["ms_per_token"] / fast_128["ms_per_token"]
        add(f"decode at 128K: {teacher} (transformers generate) / {hypenet}", f"{speedup:.1f}x", ">= 20x",
            speedup >= 20)
    fast_512, teacher_512 = (_find(rows, shape=hypenet, engine="fast", context_len=512 * K),
                             _find(rows, shape=teacher, engine="fast", context_len=512 * K))
    if fast_512 and teacher_512:
        speedup = teacher_512["ms_per_token"] / fast_512["ms_per_token"]
        add(f"decode at 512K: {teacher} (our engine) / {hypenet}", f"{speedup:.2f}x", ">= 3x", speedup >= 3)
    prefill_1m = _find(rows, shape=hypenet, engine="fast", context_len=1024 * K)
    if prefill_1m and prefill_1m.get("prefill_s") is not None:
        peak = prefill_1m.get("prefill_peak_mem_gib")  # None off CUDA: not measured, so not shown
        add(f"{hypenet} prefill of 1M tokens completes",
            f"{prefill_1m['prefill_s']:.1f} s" + (f", peak {peak:.1f} GiB" if peak is not None else ""), "completes",
            True)
    teacher_1m = [r for r in rows if r.get("shape") == teacher and r.get("context_len") == 1024 * K]
    for row in teacher_1m:
        add(f"{teacher} at 1M ({row['engine']})", row.get("status"), "report whether it fits",
            None, "decode with a synthetic cache" if row["engine"] == "fast" and row.get("prefill_s") is None else "")
    fast_p, slow_p = (_find(rows, shape=hypenet, engine="fast", context_len=512 * K),
                      _find(rows, shape=teacher, engine="transformers", context_len=512 * K))
    if fast_p and slow_p and fast_p.get("prefill_s") and slow_p.get("prefill_s"):
        speedup = slow_p["prefill_s"] / fast_p["prefill_s"]
        add(f"prefill at 512K: {teacher} (transformers) / {hypenet}",
            f"{slow_p['prefill_s']:.1f} s / {fast_p['prefill_s']:.1f} s = {speedup:.2f}x", ">= 3.5x", speedup >= 3.5)
    return targets


def render_markdown(report: dict, figure: str | None, profile_figure: str | None = None) -> str:
    results = report["results"]
    peak = measures_peak_memory(report.get("device"))  # off CUDA: no peak column, and one line that says why
    columns = [c for c in COLUMNS if peak or c[0] != "peak_mem_gib"]
    lines = ["# hypenet bench", ""]
    machine = ", ".join(f"{k} {report.get(k)}" for k in ("gpu", "torch", "transformers", "triton", "fla", "python")
                        if report.get(k))
    lines += [f"- machine: {machine}", f"- date: {report.get('date')}", f"- command: `{report.get('command')}`"]
    if report.get("bandwidth_gbps"):
        lines.append(f"- copy bandwidth (read + write), measured in this run: {report['bandwidth_gbps']:.0f} GB/s "
                     "(10^9 bytes/s)")
    lines += [f"- note: {report['note']}"] if report.get("note") else []
    lines += [] if peak else [f"- note: {peak_memory_note(report.get('device'))}"]
    lines += [f"- warning: {w}" for w in report.get("warnings", [])]
    lines += ["", "Floor = bytes one decode step must read (weights + filled KV cache + recurrent states) / copy "
              "bandwidth. Contexts without a prefill time were decoded from a cache filled with random values "
              "(decode reads the same bytes either way). Memory in GiB (2^30 bytes).", ""]
    targets = issue_targets(results)
    if targets:
        lines += ["## Targets", "", "| target | value | goal | met |", "|---|---|---|---|"]
        for t in targets:
            met = "" if t["met"] is None else ("yes" if t["met"] else "**no**")
            lines.append(f"| {t['target']} | {t['value']} | {t['goal']} | {met} {t['note']} |")
        lines.append("")
    lines += ["## Results", "", "| " + " | ".join(c[1] for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in results:
        lines.append("| " + " | ".join(_cell(row.get(key), fmt) for key, _, fmt in columns) + " |")
    lines += profile_lines(results)
    if profile_figure:
        lines += ["", f"![where a decode step's time goes]({profile_figure})"]
    if figure:
        lines += ["", f"![time per output token vs context]({figure})"]
    return "\n".join(lines) + "\n"


def profile_lines(results: list[dict]) -> list[str]:
    """With --profile: per case, one decode step's kernels (count, busy time by kind) and the time between them."""
    rows = [r for r in results if r.get("profile")]
    if not rows:
        return []
    kinds = list(dict.fromkeys(kind for r in rows for kind in r["profile"]["gpu_ms_by_kind"]))
    lines = ["", "## Decode step profile", "",
             "Steps under torch.profiler after the timed ones. Busy: the GPU kernels' time per step. Wall and "
             "uncovered (wall time in no kernel) are the profiler's own: it adds host work, so they are above the "
             "timed step and its gaps (the plot compares busy time with the timed step instead).", "",
             "| model | batch | context | kernels/step | wall ms | busy ms | uncovered ms | "
             + " | ".join(f"{kind} ms" for kind in kinds) + " | table |",
             "|" + "---|" * (8 + len(kinds))]
    for r in rows:
        p = r["profile"]
        cells = [r["model"], r["batch_size"], length_label(r["context_len"]), _cell(p.get("kernels_per_call"), ".0f"),
                 _cell(p["wall_ms"], ".3f"), _cell(p.get("gpu_busy_ms"), ".3f"), _cell(p.get("uncovered_ms"), ".3f"),
                 *(_cell(p["gpu_ms_by_kind"].get(kind), ".3f") for kind in kinds), p["table"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def plot_decode(results: list[dict], path: Path) -> Path | None:
    """Time per output token vs context (batch 1), one line per model and engine, its floor dashed."""
    series = {}
    for row in results:
        if row.get("batch_size") == 1 and row.get("status") == "ok" and row.get("ms_per_token"):
            series.setdefault(row["model"], []).append(row)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 5.2))
    for label, rows in series.items():
        rows = sorted(rows, key=lambda r: r["context_len"])
        x = [r["context_len"] for r in rows]
        (line,) = ax.plot(x, [r["ms_per_token"] for r in rows], marker="o", label=label)
        ax.plot(x, [r["floor_ms"] for r in rows], linestyle="--", color=line.get_color(), alpha=0.6,
                label=f"{label}: bandwidth floor")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    contexts = sorted({r["context_len"] for rows in series.values() for r in rows})
    ax.set_xticks(contexts, [length_label(c) for c in contexts])
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("time per output token (ms)")
    ax.set_title("Decode, batch 1")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)  # below: never over a line
    fig.tight_layout()
    save_figure(fig, path, dpi=130)
    return path


def plot_profile(results: list[dict], path: Path) -> Path | None:
    """Where each profiled decode step's time goes, against its bandwidth floor: one stacked bar per case (GPU busy
    time by kind of kernel, then the rest of the timed step, spent outside any kernel), in units of the floor, so
    that 1.0 is the floor. None when no case has GPU kernels."""
    rows = [r for r in results if r.get("status") == "ok" and (r.get("profile") or {}).get("gpu_busy_ms")]
    if not rows:
        return None
    kinds = list(dict.fromkeys(kind for r in rows for kind in r["profile"]["gpu_ms_by_kind"]))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 2.6))
    labels = [f"{r['model']}, batch {r['batch_size']}, {length_label(r['context_len'])}" for r in rows]
    left = [0.0] * len(rows)
    colors = plt.get_cmap("tab10")
    for i, kind in enumerate([*kinds, "outside kernels"]):
        if kind == "outside kernels":  # the timed step (no profiler) minus the kernels' busy time under the profiler
            widths = [max(0.0, r["ms_per_token"] - r["profile"]["gpu_busy_ms"]) / r["floor_ms"] for r in rows]
        else:
            widths = [r["profile"]["gpu_ms_by_kind"].get(kind, 0.0) / r["floor_ms"] for r in rows]
        ax.barh(labels, widths, left=left, label=kind, color="lightgrey" if kind == "outside kernels" else colors(i))
        left = [a + b for a, b in zip(left, widths)]
    for r, label, end in zip(rows, labels, left):
        ax.text(end + 0.01, label, f"{r['ms_per_token']:.3g} ms", va="center", fontsize=7)
    ax.axvline(1.0, color="black", linewidth=1, label="bandwidth floor")
    ax.set_xlim(0, max(left) * 1.15)
    ax.set_xlabel("time per decode step / its bandwidth floor")
    ax.set_title("Where a decode step's time goes")
    ax.invert_yaxis()
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    fig.tight_layout()
    save_figure(fig, path, dpi=130)
    return path


def write_report(report: dict, out_dir: str | Path, plot: bool = True) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {**report, "units": UNITS, "targets": issue_targets(report["results"])}
    figure, profile_figure = out_dir / "bench_decode.png", out_dir / "bench_profile.png"
    if plot:
        figure = plot_decode(report["results"], figure)
        profile_figure = plot_profile(report["results"], profile_figure)
    else:
        figure = figure if figure.exists() else None
        profile_figure = profile_figure if profile_figure.exists() else None
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "bench.md").write_text(render_markdown(report, figure.name if figure else None,
                                                      profile_figure.name if profile_figure else None))
    return report
