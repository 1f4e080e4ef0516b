"""`hypenet bench-train` (or `python -m hypenet.bench.train`): training throughput of the three HALO stages on a
named HypeNet shape with random weights.

Each requested stage builds the objective the pipeline trains (stage 1 `LayerAlignment`, stage 2 `Distillation`,
stage 3 `LanguageModeling` with gradient checkpointing) and trains it for a few steps through the real
`halo.engine.train` on random token ids, in a temporary stage folder. The timings are the engine's own: the
per-step `seconds` it writes to losses.jsonl; a stage's time per step is the median of the steps after the warm-up
ones (CUDA/fla start-up and autotuning stay out of it).

Model FLOPs per token are counted as `halo/flops.py` says (2N per frozen forward, 6N per trained forward and
backward, N = the Linear layers' parameters): model FLOPs, not hardware FLOPs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import statistics
import sys
import tempfile
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import first_line, is_out_of_memory
from ..halo.config import HaloError, load_config, resolve
from ..halo.flops import H200_DENSE_BF16_TFLOPS
from .memory import GIB, UNITS, measures_peak_memory, peak_memory_note
from .shapes import HYPENET_SHAPES, random_model, teacher_config

if TYPE_CHECKING:  # (torch, accelerate and the engine load with a run, not with the command line's parser)
    import torch

STAGES = ("stage1", "stage2", "stage3")
MEASURED_MATMUL_TFLOPS = 790.0  # an 8192^3 bf16 matmul through PyTorch on the H200 we run on (device README)
# What the benchmark changes in the pipeline's defaults (the paper's stage shapes): a stage-2 micro batch that fits
# one H200 next to the teacher, and a stage-3 batch that takes seconds, not minutes, per step.
BENCH_DEFAULTS = ["stage2.micro_batch_size=16", "stage3.batch_size=8", "stage3.micro_batch_size=1"]


@dataclass
class TrainBenchSettings:
    shape: str = "hypenet-2b"
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    steps: int = 6  # optimizer steps per stage
    warmup_steps: int = 2  # the first steps, left out of the median
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE config fields, e.g. stage2.micro_batch_size=8
    device: str = "cuda"
    peak_tflops: float = H200_DENSE_BF16_TFLOPS
    out: Path = Path("runs/bench-train")
    profile: bool = False  # profile each stage's last step (then left out of the median): profile_<stage>.txt


def check_settings(settings: TrainBenchSettings) -> None:
    if settings.shape not in HYPENET_SHAPES:
        raise HaloError(f"unknown HypeNet shape {settings.shape!r}; choose one of: {', '.join(HYPENET_SHAPES)}")
    unknown = [s for s in settings.stages if s not in STAGES]
    if unknown or not settings.stages:
        named = ", ".join(map(repr, unknown)) or "(none given)"
        raise HaloError(f"unknown stage {named}; stages are: {', '.join(STAGES)}")
    if not 0 <= settings.warmup_steps < settings.steps:
        raise HaloError(f"--steps ({settings.steps}) must be more than --warmup-steps ({settings.warmup_steps}), "
                        "which must not be negative: the median is taken over the steps after the warm-up")
    if settings.profile and settings.steps < settings.warmup_steps + 2:
        raise HaloError(f"--profile needs --steps >= --warmup-steps + 2 (got {settings.steps} and "
                        f"{settings.warmup_steps}): the profiled last step is left out of the median")
    if settings.device not in ("cuda", "cpu"):
        raise HaloError(f"device must be 'cuda' or 'cpu'; got {settings.device!r}")
    import torch

    if settings.device == "cuda" and not torch.cuda.is_available():
        raise HaloError("no GPU is visible; use --device cpu (with a tiny shape, e.g. tiny-hypenet)")


def read_loss_log(stage_dir: Path) -> tuple[list[dict], list[dict]]:
    """The engine's per-step records (step, loss, lr, tokens, seconds), and its out-of-memory back-offs ({"step",
    "micro_batch_size"}: the step that ran out of memory and the micro batch it went on with; none when every step
    fitted or the micro batch was set), each in order."""
    from ..halo.engine import LOSS_LOG

    records = [json.loads(line) for line in (stage_dir / LOSS_LOG).read_text().splitlines()]
    steps = [r for r in records if "step" in r and "event" not in r]
    shrinks = [{"step": r["step"], "micro_batch_size": r["micro_batch_size"]}
               for r in records if r.get("event") == "micro_batch"]
    return steps, shrinks


def launch_settings() -> dict:
    """What `accelerate launch` (or torchrun) told this process: the command line above is only this process's."""
    prefixes = ("ACCELERATE_USE_", "ACCELERATE_MIXED_PRECISION", "FSDP_", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(prefixes)}


def peak_memory_gib(device: torch.device) -> float | None:
    """This stage's peak allocated memory in GiB on the busiest of the processes' GPUs (None on the CPU: not
    measured, see bench.memory)."""
    import torch

    if device.type != "cuda":
        return None
    peak = torch.tensor(float(torch.cuda.max_memory_allocated(device)), device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    return peak.item() / GIB


def stage_row(name: str, train_config, terms, log: list[dict], settings: TrainBenchSettings, processes: int,
              peak_mem_gib: float | None, shrinks: list[dict] | None = None) -> dict:
    """Tokens/s over all processes; per GPU and the MFU divide by their number (each GPU has the peak). `shrinks`:
    the engine's out-of-memory back-offs (read_loss_log); the row then gives the micro batch the stage
    ended with, and a step that ran out of memory (and was run again smaller) is left out of the median. (The peak
    memory then includes the attempt that ran out: near what the GPU holds, not what the smaller micro batch needs.)"""
    tokens_per_step = train_config.batch_size * train_config.seq_len
    first_micro = train_config.micro_batch_size or train_config.batch_size
    timed = log[settings.warmup_steps:-1] if settings.profile else log[settings.warmup_steps:]
    shrinks = shrinks or []
    status = "ok"
    if shrinks:
        after = [r for r in timed if r["step"] > shrinks[-1]["step"]]
        if after:
            timed = after
        else:
            status = "ok (the timed steps include an out-of-memory retry: time more --steps)"
    seconds = statistics.median(r["seconds"] for r in timed)
    flops_per_token = sum(factor * n for _, factor, n in terms)
    tokens_per_s = tokens_per_step / seconds
    model_tflops = flops_per_token * tokens_per_s / 1e12
    return {
        "stage": name, "status": status, "seq_len": train_config.seq_len, "batch_size": train_config.batch_size,
        "micro_batch_size": shrinks[-1]["micro_batch_size"] if shrinks else first_micro,
        "first_micro_batch_size": first_micro, "micro_batch_changes": shrinks,
        "steps": len(log), "timed_steps": len(timed), "tokens_per_step": tokens_per_step,
        "seconds_per_step": seconds, "tokens_per_s": tokens_per_s, "tokens_per_s_per_gpu": tokens_per_s / processes,
        "flops_per_token": flops_per_token,
        "flop_terms": [{"model": what, "factor": factor, "parameters": n} for what, factor, n in terms],
        "model_tflops": model_tflops, "mfu": model_tflops / processes / settings.peak_tflops,
        "of_measured_matmul": model_tflops / processes / MEASURED_MATMUL_TFLOPS,
        "peak_mem_gib": peak_mem_gib,  # per GPU (the largest)
        "engine_log": [{k: r[k] for k in ("step", "loss", "tokens", "seconds")} for r in log],
    }


def run(settings: TrainBenchSettings) -> dict:
    """Benchmark the requested stages in pipeline order; returns the report (also written to settings.out)."""
    import numpy as np
    import torch
    from accelerate import PartialState

    from ..data import PackedChunks
    from ..halo import engine
    from ..halo.flops import FLOP_NOTE, build_objective
    from ..machine import check_cpu_processes, machine_info
    from .profile import StepProfiler
    from .run import free_memory

    check_settings(settings)
    processes = PartialState(cpu=settings.device == "cpu")  # one, or those `accelerate launch` started
    check_cpu_processes(processes)
    device = processes.device  # this process's GPU
    precision = "bf16" if device.type == "cuda" else "no"  # as the pipeline: bf16 autocast on GPU, fp32 on CPU
    shape = HYPENET_SHAPES[settings.shape]
    config = load_config(overrides=[*BENCH_DEFAULTS, *settings.overrides])
    run_settings = engine.RunSettings(checkpoint_every=10**9, resume=False, cpu=device.type == "cpu",
                                      mixed_precision=precision, compile=config.compile, gather_weights=False)
    torch.manual_seed(config.seed)
    teacher_dtype = torch.bfloat16 if precision == "bf16" else torch.float32  # the frozen teacher: no fp32 master
    teacher = random_model(teacher_config(shape.teacher), device, teacher_dtype).requires_grad_(False)
    config = resolve(config, sum(p.numel() for p in teacher.parameters()))  # the stage-2 lr for this teacher size
    mixer_types = ["attention" if i in shape.attention_layers else "lightning"
                   for i in range(teacher.config.num_hidden_layers)]
    vocab_size = teacher.config.vocab_size
    report = {
        "command": shlex.join(sys.orig_argv), "shape": settings.shape, "teacher": shape.teacher,
        "attention_layers": list(shape.attention_layers), "mixed_precision": precision, "compile": config.compile,
        "settings": {**asdict(settings), "out": str(settings.out)},
        "peak_tflops": settings.peak_tflops, "measured_matmul_tflops": MEASURED_MATMUL_TFLOPS,
        "flop_counting": FLOP_NOTE, **machine_info(device), "processes": processes.num_processes,
        "distributed": None, "launch": launch_settings(), "units": UNITS, "stages": [],
    }
    for name in (s for s in STAGES if s in settings.stages):
        stage_config = getattr(config, name)
        train_config = dataclasses.replace(
            stage_config, tokens=settings.steps * stage_config.batch_size * stage_config.seq_len)
        row = {"stage": name, "seq_len": train_config.seq_len, "batch_size": train_config.batch_size,
               "micro_batch_size": train_config.micro_batch_size or train_config.batch_size}
        objective = None
        try:
            objective, terms = build_objective(name, teacher, mixer_types, config)
            if name == "stage3":  # stage 3 trains without the teacher; the pipeline frees it first
                teacher = None
                free_memory()
            token_ids = np.random.default_rng(config.seed).integers(0, vocab_size, train_config.tokens)
            chunks = PackedChunks(token_ids, train_config.seq_len, seed=config.seed)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            profiler = StepProfiler(settings.steps, device, settings.out / f"profile_{name}.txt") \
                if settings.profile else None
            with tempfile.TemporaryDirectory(prefix=f"hypenet-bench-{name}-") as stage_dir, \
                    profiler or contextlib.nullcontext():
                hooked = dataclasses.replace(run_settings, after_step=profiler and profiler.after_step)
                result = engine.train(name, objective, train_config, chunks, Path(stage_dir), hooked)
                report["distributed"] = result.distributed
                peak = peak_memory_gib(device)  # the largest over the processes (a collective)
                if not processes.is_main_process:  # only the main one keeps the loss log and writes the report
                    continue
                log, shrinks = read_loss_log(Path(stage_dir))
            row = stage_row(name, train_config, terms, log, settings, processes.num_processes, peak, shrinks)
            if profiler is not None:
                row["profile"] = profiler.summary
        except Exception as error:  # noqa: BLE001  (one broken stage must not end a one-shot GPU run; a diverged
            # loss or a micro batch that does not divide the batch (HaloError) is reported in its row too)
            row["error"] = first_line(error)
            if is_out_of_memory(error):  # torch's or a Triton kernel's, with the micro batch set
                row["status"] = f"does not fit: out of memory (lower --set {name}.micro_batch_size)"
            else:
                traceback.print_exc()
                row["status"] = f"error: {type(error).__name__}"
        finally:
            objective = None  # (drop the stage's model and optimizer before the next stage)
            free_memory()
        report["stages"].append(row)
        if processes.is_main_process:
            write_report(report, settings.out)
    return write_report(report, settings.out) if processes.is_main_process else report


def _cell(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def profile_lines(report: dict) -> list[str]:
    """With --profile: per stage, the profiled step's wall time, its GPU kernel time and that time by kind."""
    lines = []
    for r in report["stages"]:
        p = r.get("profile")
        if not p or p.get("wall_s") is None:
            continue
        line = f"- {r['stage']}, step {p['step']} under the profiler ({p['table']}): {p['wall_s']:.3g} s"
        if p.get("gpu_kernel_s") is not None:
            kinds = ", ".join(f"{kind} {s / p['wall_s']:.0%}" for kind, s in p["gpu_kernel_s_by_kind"].items())
            line += f"; GPU kernels {p['gpu_kernel_s']:.3g} s ({p['gpu_kernel_s'] / p['wall_s']:.0%}): {kinds}"
        lines.append(line)
    return ["Profiled steps (kernel kinds by name; shares of the step's wall time):", *lines, ""] if lines else []


def markdown(report: dict) -> str:
    """A header with the setup and the FLOP counting, then the table (last)."""
    steps, warmup = report["settings"]["steps"], report["settings"]["warmup_steps"]
    steps -= bool(report["settings"].get("profile"))  # the profiled last step is not timed
    compiled = "; torch.compile in stages 2-3 (each decoder layer, the loss)" if report.get("compile") else ""
    setup = (f"{report.get('gpu') or report.get('cpu')}; torch {report['torch']}, transformers "
             f"{report['transformers']}, fla {report['fla']}; mixed precision {report['mixed_precision']}"
             f"{compiled}; attention "
             f"layers {report['attention_layers']}; {report.get('processes', 1)} process(es), "
             f"{report.get('distributed') or 'NO'} (batch sizes are global; MFU and memory per GPU). Seconds per "
             f"step: the engine's (losses.jsonl), median of steps {warmup + 1} to {steps} of each stage.")
    peaks = (f"MFU against {report['peak_tflops']:g} TFLOP/s; 'of matmul' against the "
             f"{report['measured_matmul_tflops']:g} TFLOP/s of an 8192^3 bf16 matmul measured on the H200.")
    device = report.get("device", report["settings"].get("device"))
    peak = measures_peak_memory(device)  # off CUDA: no peak column, and one line that says why
    columns = ["stage", "seq", "batch (micro)", "s/step", "tokens/s", "per GPU", "GFLOP/token", "model TFLOP/s", "MFU",
               "of matmul", *(["peak GiB"] if peak else []), "loss first → last", "status"]
    lines = [f"# hypenet bench-train: {report['shape']} (teacher {report['teacher']}, random weights)", "", setup, "",
             f"Command: `{report['command']}`", "", f"{report['flop_counting']} {peaks}", "",
             *([] if peak else [f"Note: {peak_memory_note(device)}.", ""]),
             *profile_lines(report), "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in report["stages"]:
        log = r.get("engine_log") or []
        losses = f"{log[0]['loss']:.4g} → {log[-1]['loss']:.4g}" if log else ""
        gflops = r["flops_per_token"] / 1e9 if "flops_per_token" in r else None
        status = r["status"] + (f": {r['error']}" if r.get("error") else "")
        micro = r["micro_batch_size"]
        if r.get("micro_batch_changes"):  # the engine's back-off: "96 (96 → 48 → 24: out of memory at step 1)"
            chain = [r["first_micro_batch_size"], *(c["micro_batch_size"] for c in r["micro_batch_changes"])]
            at = ", ".join(str(s) for s in sorted({c["step"] for c in r["micro_batch_changes"]}))
            micro = f"{' → '.join(map(str, chain))}: out of memory at step {at}"
        cells = [r["stage"], r["seq_len"], f"{r['batch_size']} ({micro})",
                 _cell(r.get("seconds_per_step"), ".3g"), _cell(r.get("tokens_per_s"), ",.0f"),
                 _cell(r.get("tokens_per_s_per_gpu"), ",.0f"), _cell(gflops, ".3g"),
                 _cell(r.get("model_tflops"), ".1f"), _cell(r.get("mfu"), ".1%"),
                 _cell(r.get("of_measured_matmul"), ".1%"),
                 *([_cell(r.get("peak_mem_gib"), ".1f")] if peak else []), losses, status]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_speed.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (out / "train_speed.md").write_text(markdown(report))
    return report


def register(subparsers) -> None:
    """Add the `bench-train` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "bench-train", help="training throughput and MFU of the HALO stages (random weights; one GPU, or several "
                            "under accelerate launch)",
        description="Train the objective of each HALO stage for a few steps through the real training engine, on a "
                    "named HypeNet shape with random weights and random tokens: tokens/s, seconds per step, peak "
                    "GPU memory (GiB; CUDA only) and model-FLOPs utilisation per stage. Writes train_speed.json and "
                    "train_speed.md to --out. Stage shapes are the pipeline's config fields (defaults: stage1 seq "
                    "512 batch 32; stage2 seq 512 batch 96 micro 16; stage3 seq 16384 batch 8 micro 1), changed "
                    "with --set. Under `accelerate launch` (DDP, or FSDP2 with --config_file "
                    "configs/accelerate-fsdp.yaml) the batch is global and tokens/s are also given per GPU.")
    parser.add_argument("shape", nargs="?", default="hypenet-2b",
                        help=f"named HypeNet shape ({', '.join(HYPENET_SHAPES)}; default hypenet-2b)")
    parser.add_argument("--stages", type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
                        default=list(STAGES), help="comma list (default stage1,stage2,stage3)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per stage (default 6)")
    parser.add_argument("--warmup-steps", type=int, default=2,
                        help="first steps left out of the median (default 2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="a config field, e.g. --set stage2.micro_batch_size=8 --set stage3.seq_len=32768 "
                             "(seq_len, batch_size, micro_batch_size, logits_chunk, gradient_checkpointing, seed), or "
                             "--set compile=true (torch.compile each decoder layer in stages 2 and 3)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="default cuda")
    parser.add_argument("--peak-tflops", type=float, default=H200_DENSE_BF16_TFLOPS,
                        help=f"peak for the MFU (default {H200_DENSE_BF16_TFLOPS}, H200 SXM dense bf16)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-train"),
                        help="output folder (default runs/bench-train)")
    parser.add_argument("--profile", action="store_true",
                        help="run each stage's last step under torch.profiler (left out of the median): "
                             "profile_<stage>.txt with operators and kernels by self time, and the GPU time by kind")
    parser.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    settings = TrainBenchSettings(shape=args.shape, stages=args.stages, steps=args.steps,
                                  warmup_steps=args.warmup_steps, overrides=args.overrides, device=args.device,
                                  peak_tflops=args.peak_tflops, out=args.out, profile=args.profile)
    try:
        report = run(settings)
    except HaloError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if PartialState().is_main_process:  # (under `accelerate launch` the others have no rows)
        print(markdown(report))
    return 0 if all(r["status"] == "ok" or r["status"].startswith("does not fit") for r in report["stages"]) else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m hypenet.bench.train [SHAPE] ...` (the same as `hypenet bench-train ...`)."""
    parser = argparse.ArgumentParser(prog="hypenet")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench-train", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    from hypenet.errors import exit_code

    sys.exit(exit_code(main))
