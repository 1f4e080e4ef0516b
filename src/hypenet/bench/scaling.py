"""`hypenet bench-scaling` (or `python -m hypenet.bench.scaling`): one HALO stage's `bench-train` runs side by side,
e.g. one GPU against DDP and FSDP2 on several: the loss step by step and the throughput per GPU.

Every run must have trained the same stage on the same global batches (same shape, seed, batch size and steps);
only the number of processes, the distribution and the micro batch may differ. The reference is the first run
given. The data-parallel runs do the reference's arithmetic in another order (gradients summed over processes,
bf16 rounding of the gathered weights), so their losses cannot equal it bit for bit; `--noise RUN` names a run of
the reference's own setup with only the accumulation split changed (another micro batch): how far its losses
drift from the reference's is the noise that reordering alone makes, the yardstick for the others.

Writes scaling.json, scaling.md (the table) and scaling.png (the loss curves, and each run's difference from the
reference) to --out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..halo.config import HaloError
from .memory import measures_peak_memory, peak_memory_note

COMPARED = ("shape", "teacher", "attention_layers", "mixed_precision")  # must agree between the runs
SAME_STAGE = ("seq_len", "batch_size", "steps")


def load_run(label: str, folder: Path, stage: str) -> dict:
    """A `bench-train` report's row of `stage`, with the run's settings."""
    path = Path(folder) / "train_speed.json"
    if not path.is_file():
        raise HaloError(f"{label}: no bench-train report at {path} (run `hypenet bench-train ... --out {folder}`)")
    report = json.loads(path.read_text())
    row = next((r for r in report["stages"] if r["stage"] == stage), None)
    if row is None or row.get("status") != "ok":
        status = row and f"{row['status']}: {row.get('error', '')}"
        raise HaloError(f"{label}: {path} has no finished {stage} ({status or 'not run'})")
    return {"label": label, "folder": str(folder), "report": report, "row": row}


def losses(run: dict) -> list[float]:
    return [r["loss"] for r in run["row"]["engine_log"]]


def compare(runs: list[dict], noise: str | None = None) -> dict:
    """The comparison of `runs` (from load_run; the first is the reference)."""
    if len(runs) < 2:
        raise HaloError("give at least two runs: the reference first, then the runs to compare with it")
    labels = [r["label"] for r in runs]
    if len(set(labels)) != len(labels):
        raise HaloError(f"run names must differ; got {', '.join(labels)}")
    if noise is not None and noise not in labels[1:]:
        raise HaloError(f"--noise {noise!r} names none of the runs compared with the reference "
                        f"({', '.join(labels[1:])})")
    reference = runs[0]
    for run in runs[1:]:
        for key in COMPARED:
            if run["report"].get(key) != reference["report"].get(key):
                raise HaloError(f"{run['label']} differs from {reference['label']} in {key}: "
                                f"{run['report'].get(key)!r} vs {reference['report'].get(key)!r}")
        for key in SAME_STAGE:
            if run["row"][key] != reference["row"][key]:
                raise HaloError(f"{run['label']} differs from {reference['label']} in the stage's {key}: "
                                f"{run['row'][key]} vs {reference['row'][key]} "
                                "(compare runs of the same global batches)")
    base = losses(reference)
    reference_per_gpu = reference["row"].get("tokens_per_s_per_gpu", reference["row"]["tokens_per_s"])
    rows = []
    for run in runs:
        row, report = run["row"], run["report"]
        diffs = [abs(a - b) for a, b in zip(losses(run), base)]
        per_gpu = row.get("tokens_per_s_per_gpu", row["tokens_per_s"])
        rows.append({
            "run": run["label"], "folder": run["folder"], "command": report["command"],
            "processes": report.get("processes", 1), "distributed": report.get("distributed") or "NO",
            "compile": report.get("compile", False), "micro_batch_size": row["micro_batch_size"],
            "seconds_per_step": row["seconds_per_step"], "tokens_per_s": row["tokens_per_s"],
            "tokens_per_s_per_gpu": per_gpu, "per_gpu_of_reference": per_gpu / reference_per_gpu, "mfu": row["mfu"],
            "device": report.get("device"), "peak_mem_gib": row.get("peak_mem_gib"),
            "max_abs_loss_diff": max(diffs), "mean_abs_loss_diff": sum(diffs) / len(diffs),
            "max_rel_loss_diff": max(d / abs(b) for d, b in zip(diffs, base)),
            "losses": losses(run),
        })
    noise_row = next((r for r in rows if r["run"] == noise), None)
    return {
        "stage": reference["row"]["stage"], "shape": reference["report"]["shape"],
        "seq_len": reference["row"]["seq_len"], "batch_size": reference["row"]["batch_size"],
        "steps": reference["row"]["steps"], "reference": reference["label"], "noise": noise,
        "noise_max_abs_loss_diff": noise_row and noise_row["max_abs_loss_diff"],
        "gpu": reference["report"].get("gpu"), "runs": rows,
    }


def _cell(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _peak_cell(run: dict) -> str:
    if not measures_peak_memory(run.get("device")):
        return f"not measured ({run['device']})"
    return _cell(run["peak_mem_gib"], ".1f")


def markdown(result: dict, command: str) -> str:
    floor = result["noise_max_abs_loss_diff"]
    # peak memory is measured on CUDA only: no column when no run has it (and one line that says why)
    peak = any(measures_peak_memory(r.get("device")) for r in result["runs"])
    columns = ["run", "GPUs", "distributed", "micro batch", "s/step", "tokens/s", "per GPU", "per GPU vs reference",
               "MFU", *(["peak GiB per GPU"] if peak else []), "max abs loss diff", "mean abs loss diff",
               "max rel loss diff"]
    lines = [
        f"# hypenet bench-scaling: {result['stage']} of {result['shape']}, {result['steps']} steps of "
        f"{result['batch_size']} x {result['seq_len']} tokens", "",
        f"Command: `{command}`", "",
        f"Reference: {result['reference']} (per GPU = 100%). Loss differences are taken step by step against it."
        + (f" Noise floor: {result['noise']}, the reference's setup with another accumulation split, drifts up to "
           f"{floor:.3g} from it." if floor is not None else ""), "",
        *([] if peak else [f"Note: {peak_memory_note(result['runs'][0].get('device'))}.", ""]),
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for r in result["runs"]:
        cells = [r["run"], r["processes"], r["distributed"] + (" + compile" if r["compile"] else ""),
                 r["micro_batch_size"], _cell(r["seconds_per_step"], ".3g"), _cell(r["tokens_per_s"], ",.0f"),
                 _cell(r["tokens_per_s_per_gpu"], ",.0f"), _cell(r["per_gpu_of_reference"], ".1%"),
                 _cell(r["mfu"], ".1%"), *([_peak_cell(r)] if peak else []), _cell(r["max_abs_loss_diff"], ".3g"),
                 _cell(r["mean_abs_loss_diff"], ".3g"), _cell(r["max_rel_loss_diff"], ".2%")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", "Runs:", *(f"- {r['run']}: `{r['command']}`" for r in result["runs"])]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    from ..eval.plots import save_figure

    figure, (curves, diffs) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=[2, 1])
    base = result["runs"][0]["losses"]
    for i, r in enumerate(result["runs"]):
        steps = range(1, len(r["losses"]) + 1)
        label = f"{r['run']} ({r['processes']} GPU{'s' if r['processes'] > 1 else ''}, {r['distributed']})"
        curves.plot(steps, r["losses"], label=label, linewidth=1.2, color=f"C{i}")
        if i:
            diffs.plot(steps, [a - b for a, b in zip(r["losses"], base)], label=r["run"], linewidth=1.0,
                       color=f"C{i}")
    curves.set_ylabel(f"{result['stage']} loss")
    curves.set_title(f"{result['stage']} of {result['shape']}: {result['batch_size']} x {result['seq_len']} tokens "
                     f"per step" + (f", {result['gpu']}" if result.get("gpu") else ""))
    curves.legend(fontsize=8)
    diffs.axhline(0.0, color="black", linewidth=0.6)
    diffs.set_ylabel(f"loss - {result['reference']}")
    diffs.set_xlabel("optimizer step")
    diffs.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path, dpi=120)


def run(named: list[str], stage: str, out: Path, noise: str | None = None, command: str = "") -> dict:
    runs = []
    for item in named:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise HaloError(f"give each run as NAME=FOLDER (a bench-train --out folder); got {item!r}")
        runs.append(load_run(label, Path(folder), stage))
    result = compare(runs, noise)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps({"command": command, **result}, indent=2) + "\n")
    (out / "scaling.md").write_text(markdown(result, command))
    plot(result, out / "scaling.png")
    return result


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench-scaling", help="compare bench-train runs of one stage (one GPU vs DDP / FSDP): losses, speed per GPU",
        description="Side by side: one HALO stage's bench-train runs on the same global batches, e.g. one GPU "
                    "against `accelerate launch` with DDP and FSDP2. The first run is the reference; writes "
                    "scaling.json, scaling.md and scaling.png (loss curves and their differences) to --out.")
    parser.add_argument("runs", nargs="+", metavar="NAME=FOLDER", help="bench-train --out folders; reference first")
    parser.add_argument("--stage", default="stage2", help="the stage to compare (default stage2)")
    parser.add_argument("--noise", metavar="NAME", help="the run that differs from the reference only in its "
                        "micro batch: its loss drift is the noise floor")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-scaling"), help="default runs/bench-scaling")
    parser.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    command = shlex.join(sys.orig_argv)
    try:
        result = run(args.runs, args.stage, args.out, args.noise, command)
    except HaloError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown(result, command))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m hypenet.bench.scaling NAME=FOLDER ...` (the same as `hypenet bench-scaling ...`)."""
    parser = argparse.ArgumentParser(prog="hypenet")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench-scaling", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    from hypenet.errors import exit_code

    sys.exit(exit_code(main))
