"""`hypenet` command line: convert (HALO), its stages, eval/compare/merge-evals, generate, bench, bench-train,
bench-scaling."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .errors import exit_code

# DeepSpeed's warning when it finds no GPU, which its import logs (to stdout) wherever it is installed
DEEPSPEED_NO_GPU_NOTICE = "Setting accelerator to CPU"


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .bench.cli import register as register_bench
    from .bench.scaling import register as register_bench_scaling
    from .bench.train import register as register_bench_train
    from .eval.cli import register as register_eval
    from .fast.cli import register as register_generate
    from .halo.cli import register as register_halo

    parser = argparse.ArgumentParser(prog="hypenet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hypenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_halo(sub)
    register_eval(sub)
    register_generate(sub)
    register_bench(sub)
    register_bench_train(sub)
    register_bench_scaling(sub)
    parser.commands = sub.choices  # (main: a command's own usage for arguments it does not take)
    return parser


def quiet_deepspeed_unless_used() -> None:
    """Drop DeepSpeed's "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect
    it." from a run that does not use DeepSpeed (one that accelerate did not launch with it).

    hypenet imports DeepSpeed only for a DeepSpeed run, but accelerate imports it wherever it is installed:
    `extract_model_from_parallel` (behind `Accelerator.get_state_dict` and `unwrap_model`, and transformers'
    `save_pretrained`) runs `from deepspeed import DeepSpeedEngine` to check for a DeepSpeed-wrapped model whenever
    `is_deepspeed_available()`. A conversion gathers each stage's weights and saves the export through them, so a CPU
    conversion imports DeepSpeed (at the end of stage 1) and its import logs that line. Nothing is imported here:
    DeepSpeed's logger is taken by its name, and keeps this filter when DeepSpeed sets it up."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":  # (as accelerate reads it)
        return
    logging.getLogger("DeepSpeed").addFilter(_not_the_no_gpu_notice)  # (once: a logger keeps one of each filter)


def _not_the_no_gpu_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(DEEPSPEED_NO_GPU_NOTICE)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    own_command_line = argv is None  # (this process was started for this command: its start-up counts, halo.cli)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # `hypenet` alone: what it can do, not a usage error
        parser.print_help()
        return 0
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse's own error names the top-level usage, which lists no command's arguments
        split = any(a == "--set" and argv[i + 2:i + 3] and argv[i + 2] in unknown for i, a in enumerate(argv))
        hint = " (--set takes KEY=VALUE as one argument)" if split else ""
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    args.own_command_line = own_command_line
    quiet_deepspeed_unless_used()
    return exit_code(lambda: args.func(args))  # an input the user must fix: one line, no traceback


if __name__ == "__main__":
    sys.exit(main())
