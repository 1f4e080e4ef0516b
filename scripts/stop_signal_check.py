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
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = {"as_one": None, "as_again": 0.0}  # REPEAT_S: the engine's own, and 0 (the engine before the change)


def child(stage_dir: Path, device: str, repeat_s: float | None) -> None:
    import torch
    from torch import nn

    from hypenet.data import PackedChunks
    from hypenet.halo import engine
    from hypenet.halo.config import TrainConfig

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("hypenet.halo.engine").setLevel(logging.INFO)
    if repeat_s is not None:
        engine.StopOnSignal.REPEAT_S = repeat_s

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
    run = engine.RunSettings(checkpoint_every=10**9, cpu=device == "cpu", mixed_precision="no")
    engine.train("stage2", Objective(), config, chunks, stage_dir, run)


def trial(i: int, mode: str, args, root: Path) -> dict:
    stage_dir = root / f"{mode}-{i}"
    after = random.Random(f"{mode}-{i}").uniform(args.after, args.after + args.spread)
    command = ["timeout", "--signal=INT", "--kill-after=10", f"{after:.3f}", sys.executable, __file__, "--child",
               str(stage_dir), "--device", args.device, "--mode", mode]
    done = subprocess.run(command, capture_output=True, text=True)
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
    }
    if not result["kept"]:
        result["stderr_tail"] = done.stderr[-1500:]
    shutil.rmtree(stage_dir, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16, help="stops per mode")
    parser.add_argument("--parallel", type=int, default=4, help="children at once")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--after", type=float, default=8.0,
                        help="seconds from a child's start to its signal, at least (start-up: importing torch, CUDA)")
    parser.add_argument("--spread", type=float, default=4.0, help="the signal comes uniformly within this much more")
    parser.add_argument("--out", type=Path, default=Path("stop_signal"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default="as_one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.device, MODES[args.mode])
        return
    if shutil.which("timeout") is None:
        sys.exit("needs GNU coreutils' timeout on PATH")
    root = Path(tempfile.mkdtemp(prefix="stop_signal_"))
    jobs = [(i, mode) for mode in MODES for i in range(args.trials)]
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda job: trial(*job, args, root), jobs))
    shutil.rmtree(root, ignore_errors=True)
    summary = {mode: {"stops": sum(r["mode"] == mode for r in results),
                      "kept": sum(r["mode"] == mode and r["kept"] for r in results),
                      "twins_ignored": sum(r["twins_ignored"] for r in results if r["mode"] == mode)}
               for mode in MODES}
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
    lines = ["| a twin signal counted | stops | checkpoint of the last step kept | twins the handler saw and ignored |",
             "|---|---|---|---|"]
    names = {"as_one": "as one stop (the engine now)", "as_again": "as \"again\" (REPEAT_S = 0: before)"}
    for mode, s in summary.items():
        twins = s["twins_ignored"] if mode == "as_one" else "-"
        lines.append(f"| {names[mode]} | {s['stops']} | {s['kept']} | {twins} |")
    (args.out / "stop_signal.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
