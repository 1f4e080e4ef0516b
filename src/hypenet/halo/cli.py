"""`hypenet convert` and the single-stage commands `hypenet stage1|select|stage2|stage3|export`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .config import PRESETS, HaloError, is_main_rank, load_config, read_config

COMMANDS = {
    "convert": "convert a Transformer into a HypeNet hybrid: every HALO stage, then export and report",
    "stage1": "HALO stage 1 alone: align a lightning layer to every teacher attention layer (MSE)",
    "select": "choose the layers that keep softmax attention (strategy halo needs stage1)",
    "stage2": "HALO stage 2 alone: distil the hybrid from the teacher (KL; needs select)",
    "stage3": "HALO stage 3 alone: long-context finetuning (cross-entropy; needs stage2)",
    "export": "export the HF checkpoint, choosing HyPE's logit-scaling base (needs stage3)",
}


def register(subparsers) -> None:
    for name, help_text in COMMANDS.items():
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--teacher",
                            help="HF checkpoint folder, hub id or .gguf file (default: embedded SmolLM2-135M-Instruct)")
        parser.add_argument("--data",
                            help="builtin (default), a .txt/.jsonl/.parquet file or folder, "
                                 "or hf:NAME[:CONFIG][:SPLIT]")
        parser.add_argument("--out", help="output folder (default: hypenet-out)")
        parser.add_argument("--config", action="append", default=[], metavar="FILE",
                            help="YAML config file (repeatable)")
        parser.add_argument("--preset", choices=sorted(PRESETS),
                            help="paper (default budgets), cpu (~10 min on 2 cores) or smoke (a few steps per "
                                 "stage, ~1-2 min on 2 cores: checks that everything runs)")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                            help="override any config field, e.g. --set stage2.lr=5e-5 --set stage1.tokens=10M")
        parser.add_argument("--device", choices=["auto", "cpu", "cuda"],
                            help="where to run (default auto: a GPU when one is visible); the same as --set device=")
        shown = ("what it reads and writes, how it chooses the base, what --out holds of it" if name == "export" else
                 "stages, tokens, steps, FLOPs, time on an H200, what --out holds")
        parser.add_argument("--plan", action="store_true",
                            help=f"print what this would do ({shown}) without loading weights or writing anything, "
                                 "then exit")
        resume = parser.add_mutually_exclusive_group()
        resume.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
        resume.add_argument("--overwrite", action="store_true", help="replace what --out holds for these stages")
        if name not in ("convert", "stage1"):
            parser.add_argument("--from", dest="start_from", metavar="DIR",
                                help="start from the finished stages before this one in another conversion's folder: "
                                     "they (and its settings, changed by --set) are copied into --out")
        parser.set_defaults(func=lambda args, name=name: run(name, args))


def build_config(command: str, args: argparse.Namespace):
    """The config of a command: the one saved in --out (when continuing a conversion there) or in --from, or the
    defaults, then --preset, --config files, --set overrides and the named flags."""
    out = Path(args.out or "hypenet-out")
    saved = out / "config.yaml"
    if not saved.is_file() and getattr(args, "start_from", None):
        saved = Path(args.start_from) / "config.yaml"
    fresh = command == "convert" and not args.resume  # a new conversion (--overwrite included) starts from defaults
    base = read_config(saved) if saved.is_file() and not fresh else None
    return load_config(
        args.preset, args.config, args.overrides, base=base,
        teacher=args.teacher, data={"source": args.data} if args.data else None, out=args.out, device=args.device,
    )


def interrupted_hint(command: str, out: str) -> str:
    """What to run after Ctrl-C: the command with --resume, under the same launcher when several processes ran it (a
    resume on another number of processes continues too, with the batch split its own way)."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1:
        return (f"interrupted; continue with the same launch on {processes} processes and --resume "
                f"(e.g. accelerate launch ... -m hypenet.cli {command} --out {out} --resume)")
    return f"interrupted; continue with: hypenet {command} --out {out} --resume"


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """SIGTERM (a scheduler's preemption, `timeout`) ends a conversion as Ctrl-C does, outside training too: during
    the teacher's load, the layer choice or the export it killed the process with no word (exit -15). Training
    installs its own handler (StopOnSignal: the step in flight is checkpointed first) and puts this one back."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_before_anything_hint(out: str) -> str | None:
    """After Ctrl-C before the conversion saved its settings: nothing to resume (--resume would start from the
    defaults, not from the options given), so run the same command again."""
    from .pipeline import CONFIG_FILE

    if (Path(out) / CONFIG_FILE).is_file():
        return None
    return "interrupted before anything was saved; run the same command again"


def process_group_up() -> bool:
    """Whether a torch.distributed process group is up (without importing torch when nothing has)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


# seconds without the GIL left to a process group's threads after it is taken down (take_down_process_group)
TEARDOWN_GRACE_S = 0.2


def take_down_process_group() -> None:
    """Destroy the torch.distributed process groups, then leave their communication threads the GIL for a moment.

    gloo's worker threads free a finished collective after it has returned to Python, and a barrier frees the
    collectives queued before it. Their buffers may hold Python objects (DeepSpeed's parameters carry Python
    attributes), so a thread needs the GIL to free them. One still waiting for it when the interpreter finalizes is
    ended inside a C++ destructor, and the process aborts after its work is done: "terminate called without an
    active exception", SIGABRT. A 2-process ZeRO-3 test worker did so in a few percent of its runs
    (results/cpu_teardown/)."""
    sys.modules["torch.distributed"].destroy_process_group()
    time.sleep(TEARDOWN_GRACE_S)


@contextlib.contextmanager
def own_process_group():
    """Take down the process group that a conversion's processes started (accelerate starts it under a launcher) as
    the run ends, also on an error or Ctrl-C, as torch asks of a program before it exits (take_down_process_group).
    A group that was up before is the caller's and stays."""
    was_up = process_group_up()
    try:
        yield
    finally:
        if not was_up and process_group_up():
            take_down_process_group()


def run(command: str, args: argparse.Namespace) -> int:
    with own_process_group():
        return _run(command, args)


def _run(command: str, args: argparse.Namespace) -> int:
    from .pipeline import STAGES, run_stages

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # huggingface_hub prints its records (the hub's retries) through its own handler, and passes them on to ours too;
    # once is enough (transformers' logger passes nothing on)
    logging.getLogger("huggingface_hub").propagate = False
    # progress lines once (the main process's); warnings from every process, which may differ
    logging.getLogger("hypenet").setLevel(logging.INFO if is_main_rank() else logging.WARNING)
    try:
        config = build_config(command, args)
        stages = list(STAGES) if command == "convert" else [command]
        if args.plan:
            from .plan import make_plan, markdown

            plan = make_plan(config, stages, resume=args.resume, overwrite=args.overwrite,
                             start_from=getattr(args, "start_from", None))
            print(markdown(plan), end="")
            return 2 if plan["refusal"] else 0  # (as the run would end: a script can tell)
        with sigterm_as_ctrl_c():
            run_stages(config, stages, resume=args.resume, overwrite=args.overwrite,
                       start_from=getattr(args, "start_from", None),
                       # the process's start-up counts where it was started for this command (its own command line),
                       # not where main([...]) is called from a longer-lived one (a notebook, a test)
                       count_startup=getattr(args, "own_command_line", False))
    except HaloError as error:  # an input the user must fix: as every hypenet command ends on one (exit code 2)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if is_main_rank():  # (once, not by every process)
            out = args.out or "hypenet-out"
            print(interrupted_before_anything_hint(out) or interrupted_hint(command, out), file=sys.stderr)
        return 130
    return 0
