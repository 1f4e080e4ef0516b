"""Figures for eval results: NIAH heatmaps (length x depth), accuracy vs length, perplexity vs position bucket."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402  (matplotlib's own dependency)

from ..units import length_label  # noqa: E402


def plot_niah_heatmap(task_result: dict, path: str | Path, title: str) -> Path:
    """Accuracy of one task: context length on x, needle depth on y (0% = start of the haystack at the top)."""
    lengths = sorted(task_result["by_length"], key=int)
    depths = sorted({d for cell in task_result["by_length"].values() for d in cell["by_depth"]}, key=float)
    grid = [[100 * task_result["by_length"][ln]["by_depth"].get(d, float("nan")) for ln in lengths] for d in depths]
    fig, ax = plt.subplots(figsize=(1.1 * len(lengths) + 2.5, 0.45 * len(depths) + 1.8))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for row, values in enumerate(grid):
        for col, value in enumerate(values):
            ax.text(col, row, f"{value:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [length_label(int(ln)) for ln in lengths])
    ax.set_yticks(range(len(depths)), [f"{100 * float(d):.0f}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    return _save(fig, path)


def plot_needle_attention(series: dict[str, dict], path: str | Path, title: str) -> Path:
    """`evaluate_needle_attention` results (label -> result): one panel per task, the decoder layer on x (a HypeNet
    student has points only at its attention layers), the needle's share of the last token's attention for the head
    that looks most at it; one colour per model, one line style per length; grey: an even spread's share."""
    tasks = sorted({task for result in series.values() for task in result["tasks"]})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks) + 1, 3.8), squeeze=False, sharey=True)
    styles = ("-", "--", ":", "-.")
    for ax, task in zip(axes[0], tasks):
        uniform = None
        for m, (label, result) in enumerate(series.items()):
            layers = [int(name.split()[-1]) for name in result["layers"]]
            by_length = result["tasks"].get(task, {})
            yarn = result.get("yarn", {}).get("factors", {})  # lengths measured with YaRN (eval --yarn)
            for i, length in enumerate(sorted(by_length, key=int)):
                cell = by_length[length]
                ax.plot(layers, [100 * v for v in cell["max_head"]], marker="o", markersize=4, color=f"C{m}",
                        linestyle=styles[i % len(styles)],
                        label=f"{label}, {length_label(int(length))}" + (" + YaRN" if length in yarn else ""))
                uniform = cell["uniform"] if uniform is None else uniform
        if uniform is not None:
            ax.axhline(100 * uniform, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel("decoder layer")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("attention on the needle, most-looking head (%)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def plot_accuracy_vs_length(series: dict[str, dict[str, float]], path: str | Path, title: str,
                            ylabel: str = "NIAH accuracy (%)", controls: dict[str, dict[str, float]] | None = None,
                            control_label: str = "control",
                            intervals: dict[str, dict[str, tuple[float, float]]] | None = None) -> Path:
    """One line per model (label -> {length: accuracy in [0, 1]}), log2 length axis; a model's control (the same
    measurement without what it should use), if any, dashed in its colour; a model's intervals (label -> {length:
    (low, high)}), if any, as error bars, each model's points nudged sideways so that the bars stay apart."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (label, by_length) in enumerate(series.items()):
        lengths = sorted(by_length, key=int)
        bars = (intervals or {}).get(label, {})
        nudge = 2 ** (0.04 * (i - (len(series) - 1) / 2)) if intervals else 1.0
        x, y = [int(ln) * nudge for ln in lengths], [100 * by_length[ln] for ln in lengths]
        (line,) = ax.plot(x, y, marker="o", label=label)
        if bars:
            shown = [j for j, ln in enumerate(lengths) if ln in bars]
            ax.errorbar([x[j] for j in shown], [y[j] for j in shown], fmt="none", ecolor=line.get_color(), alpha=0.5,
                        capsize=3, yerr=[[y[j] - 100 * bars[lengths[j]][0] for j in shown],
                                         [100 * bars[lengths[j]][1] - y[j] for j in shown]])
        control = (controls or {}).get(label)
        if control:
            lengths = sorted(control, key=int)
            ax.plot([int(ln) for ln in lengths], [100 * control[ln] for ln in lengths], marker="x", linestyle="--",
                    color=line.get_color(), label=f"{label}, {control_label}")
    _log2_length_axis(ax, {int(ln) for s in series.values() for ln in s})
    ax.set_ylim(-3, 103)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(fig, ax)
    return _save(fig, path)


def plot_perplexity_by_bucket(series: dict[str, list[dict]], path: str | Path, title: str) -> Path:
    """One line per model (label -> perplexity buckets), each point at its bucket's end position."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, buckets in series.items():
        points = [(b["end"], b["ppl"]) for b in buckets if b["ppl"] is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    _log2_length_axis(ax, {b["end"] for buckets in series.values() for b in buckets})
    ax.set_yscale("log")  # beyond its window a teacher's perplexity grows by orders of magnitude
    ax.set_xlabel("token position (bucket end)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(fig, ax)
    return _save(fig, path)


def _legend(fig, ax, inside: int = 4) -> None:
    """The legend inside the axes for up to `inside` entries; below them, in two columns, for more, the figure made
    taller to hold it (a legend of many models inside the axes covers the long-context points)."""
    entries = len(ax.get_legend_handles_labels()[1])
    if entries <= inside:
        ax.legend()
        return
    rows = -(-entries // 2)
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + 0.2 * rows)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)


def _log2_length_axis(ax, lengths: set[int]) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(lengths)
    ax.set_xticks(ticks, [length_label(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def save_figure(fig, path: str | Path, dpi: int) -> Path:
    """Write `fig` to `path` as a PNG of at most 256 colours, and close it. Plots hold few colours, so this looks the
    same as matplotlib's RGBA PNG at about a third of its size (results travel to and from GPU machines in carries of
    limited size, and are committed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rendered = io.BytesIO()
    fig.savefig(rendered, format="png", dpi=dpi)
    plt.close(fig)
    Image.open(rendered).convert("RGB").quantize(colors=256).save(path, optimize=True)
    return path
