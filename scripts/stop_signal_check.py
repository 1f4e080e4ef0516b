"""Does a training run stopped by GNU `timeout --signal=INT` keep the checkpoint of its last step?

`timeout` signals its command and then the command's whole process group, so a command it runs directly gets the
signal twice within microseconds. The engine's StopOnSignal took a second signal as "stop at once, without a
checkpoint"; whether Python's handler sees the twin as a second call depends on timing (never in 400 tries on a
2-core CPU; a stage 2 on the GPU machine lost its stop's checkpoint in three leases of six). Since the twin is
counted as one stop when it comes within `StopOnSignal.REPEAT_S`.

This script trains a small objective through `hypenet.halo.engine.train` in child processes, each stopped by
`timeout --signal=INT --kill-after=10` at a random moment, and counts the stops that kept their step's checkpoint:
with the engine as it is, and with REPEAT_S = 0 (every repeat is "again": the engine before the change). The engine
logs each twin it takes as one stop, so the first mode counts them too.

    python scripts/stop_signal_check.py --trials 32 --parallel 8 --device cuda --out results/stop_signal

`--modes triton,triton_unwatched` asks another question. Compiling a Triton kernel puts a handler of LLVM's (in
Triton's libtriton.so) in place of SIGINT's and SIGTERM's at the OS level, under Python's (results/gpu_convert/
stop_resume/, "The watch at work"). In these modes each child compiles one small Triton kernel after its first step
(on the GPU for cuda; on a CPU for an sm_90 target, without running it: needs the `triton` package), then trains on
until the signal: with the engine's watch, which puts the stop's handlers back after the step, and without it
(`triton_unwatched`), where the signal meets LLVM's handler. Does that handler lose the stop?
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = {  # REPEAT_S (None: the engine's own; 0: the engine before the twin was counted as one), a Triton kernel
    # compiled after the first step, the engine's watch on its handlers
    "as_one": {"repeat_s": None, "triton": False, "watch": True},
    "as_again": {"repeat_s": 0.0, "triton": False, "watch": True},
    "triton": {"repeat_s": None, "triton": True, "watch": True},
    "triton_unwatched": {"repeat_s": None, "triton": True, "watch": False},
}
NAMES = {"as_one": "as one stop (the engine now)", "as_again": "as \"again\" (REPEAT_S = 0: before)",
         "triton": "as one, a Triton kernel compiled after step 1, the watch on",
         "triton_unwatched": "as one, a Triton kernel compiled after step 1, no watch"}


def compile_triton_kernel(device: str) -> None:
    """Compile one small Triton kernel: for the GPU and run it (cuda), or for an sm_90 target without a GPU."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def add_one(x, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(x + i, tl.load(x + i, mask=i < n) + 1, mask=i < n)

    if device == "cuda":
        x = torch.zeros(1000, device="cuda")
        add_one[(8,)](x, 1000, BLOCK=128)
        torch.cuda.synchronize()
        return
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(fn=add_one, signature={"x": "*fp32", "n": "i32", "BLOCK": "constexpr"},
                       constexprs={"BLOCK": 128})
    triton.compile(source, target=GPUTarget("cuda", 90, 32))


def child(stage_dir: Path, device: str, mode: dict) -> None:
    import torch
    from torch import nn

    from hypenet.data import PackedChunks
    from hypenet.halo import engine
    from hypenet.halo.config import TrainConfig

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("hypenet.halo.engine").setLevel(logging.INFO)
    if mode["repeat_s"] is not None:
        engine.StopOnSignal.REPEAT_S = mode["repeat_s"]
    if not mode["watch"]:
        engine.StopOnSignal.watch = lambda self, step: None
    after_step = None
    if mode["triton"]:
        def after_step(step: int) -> None:
            if step == 1:
                compile_triton_kernel(device)
                print(f"after the Triton kernel: SIGINT {engine.describe_handler(signal.SIGINT)}", file=sys.stderr,
                      flush=True)

    class Objective(nn.Module):  # next-token cross-entropy of a small MLP: milliseconds a step, many Python ops
        def __init__(self, vocab=256, width=1024, depth=4):
            super().__init__()
            self.embed = nn.Embedding(vocab, width)
            self.body = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(depth)])
            self.head = nn.Linear(width, vocab)

        def forward(self, input_ids):
            logits = self.head(self.body(self.embed(input_ids[:, :-1])))
            return nn.functional.cross_entropy(logits.flatten(0, 1).float(), input_ids[:, 1:].flatten())

    torch.manual_seed(0)
    seq_len, batch = 256, 16
    config = TrainConfig(tokens=10**6 * batch * seq_len, seq_len=seq_len, batch_size=batch, micro_batch_size=4,
                         lr=1e-4, warmup_steps=1)
    chunks = PackedChunks(torch.randint(0, 256, (200_000,)).numpy(), seq_len, seed=0)
    run = engine.RunSettings(checkpoint_every=10**9, cpu=device == "cpu", mixed_precision="no", after_step=after_step)
    engine.train("stage2", Objective(), config, chunks, stage_dir, run)


def trial(i: int, mode: str, args, root: Path) -> dict:
    stage_dir = root / f"{mode}-{i}"
    after = random.Random(f"{mode}-{i}").uniform(args.after, args.after + args.spread)
    command = ["timeout", "--signal=INT", "--kill-after=10", f"{after:.3f}", sys.executable, __file__, "--child",
               str(stage_dir), "--device", args.device, "--mode", mode]
    env = dict(os.environ)
    if MODES[mode]["triton"]:  # a cache of its own, so that the kernel is compiled (LLVM runs), not loaded
        env["TRITON_CACHE_DIR"] = str(stage_dir / "triton_cache")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    from hypenet.halo.engine import CHECKPOINTS, LOSS_LOG

    losses = stage_dir / LOSS_LOG
    steps = [json.loads(line).get("step") for line in losses.read_text().splitlines()] if losses.is_file() else []
    last = max((s for s in steps if s is not None), default=0)
    kept = sorted(p.name for p in (stage_dir / CHECKPOINTS).glob("step-*"))  # (none where the folder is missing)
    result = {
        "mode": mode, "trial": i, "signal_after_s": round(after, 3), "exit": done.returncode, "last_step": last,
        "checkpoints": kept, "kept": kept == [f"step-{last:08d}"] and last > 0,
        "stopped_line": "stopped by signal after step" in done.stderr,
        "twins_ignored": done.stderr.count("one stop"),
        "handler_replaced": "libtriton" in done.stderr,  # (the child's line after its Triton kernel, or the watch's)
    }
    if not result["kept"]:
        result["stderr_tail"] = done.stderr[-1500:]
    shutil.rmtree(stage_dir, ignore_errors=True)
    return result


def summarise(results: list[dict], modes: list[str]) -> dict:
    """Per mode: the stops; those whose signal came before the child's first step ended (it was still importing or
    in that step: no checkpoint to keep), and those after; how many of the latter kept their last step's checkpoint;
    the twins ignored and the children that saw a handler in libtriton.so."""
    summary = {}
    for mode in modes:
        rows = [r for r in results if r["mode"] == mode]
        after_a_step = [r for r in rows if r["last_step"] > 0]
        summary[mode] = {"stops": len(rows), "before_a_step": len(rows) - len(after_a_step),
                         "after_a_step": len(after_a_step), "kept": sum(r["kept"] for r in after_a_step),
                         "twins_ignored": sum(r["twins_ignored"] for r in rows),
                         "handler_replaced": sum(r["handler_replaced"] for r in rows)}
    return summary


def table(summary: dict) -> list[str]:
    lines = ["| a twin signal counted | stops | before a step ended | after one | of those, the last step's "
             "checkpoint kept | twins the handler saw and ignored | a handler in libtriton.so seen |",
             "|---|---|---|---|---|---|---|"]
    for mode, s in summary.items():
        twins = s["twins_ignored"] if MODES[mode]["repeat_s"] is None else "-"
        lines.append(f"| {NAMES[mode]} | {s['stops']} | {s['before_a_step']} | {s['after_a_step']} | {s['kept']} "
                     f"| {twins} | {s['handler_replaced']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16, help="stops per mode")
    parser.add_argument("--parallel", type=int, default=4, help="children at once")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--after", type=float, default=8.0,
                        help="seconds from a child's start to its signal, at least (start-up: importing torch, CUDA)")
    parser.add_argument("--spread", type=float, default=4.0, help="the signal comes uniformly within this much more")
    parser.add_argument("--out", type=Path, default=Path("stop_signal"))
    parser.add_argument("--modes", default="as_one,as_again",
                        help=f"comma-separated, of: {', '.join(MODES)} (the docstring says what each is)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default="as_one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.device, MODES[args.mode])
        return
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes: unknown {', '.join(unknown) or '(none given)'}; choose of {', '.join(MODES)}")
    if any(MODES[m]["triton"] for m in modes):
        try:
            import triton  # noqa: F401
        except ImportError:
            sys.exit("the triton modes need the `triton` package (pip install triton)")
    if shutil.which("timeout") is None:
        sys.exit("needs GNU coreutils' timeout on PATH")
    root = Path(tempfile.mkdtemp(prefix="stop_signal_"))
    jobs = [(i, mode) for mode in modes for i in range(args.trials)]
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda job: trial(*job, args, root), jobs))
    shutil.rmtree(root, ignore_errors=True)
    summary = summarise(results, modes)
    args.out.mkdir(parents=True, exist_ok=True)
    info = {"device": args.device, "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "cpus": os.cpu_count(), "summary": summary, "trials": results}
    try:
        import torch
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        info["torch"] = torch.__version__
    except ImportError:
        pass
    (args.out / "stop_signal.json").write_text(json.dumps(info, indent=1))
    lines = table(summary)
    (args.out / "stop_signal.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
