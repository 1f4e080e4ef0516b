"""Errors that name a bad input (the `hypenet` command prints their message alone, with no traceback), and what
counts as the device running out of memory."""

from __future__ import annotations


class MissingInputError(FileNotFoundError):
    """A path the user named, or a package they must install, is not there.

    A subclass of FileNotFoundError, so that library callers catching that still do; the CLI catches only this, so
    a missing file that is hypenet's own bug keeps its traceback."""


class InvalidInputError(ValueError):
    """A value the user gave that cannot work (a NIAH length shorter than its prompt's template, ...). A subclass of
    ValueError for library callers; the CLI prints its message alone, as for MissingInputError."""


def exit_code(command) -> int:
    """Run a command-line entry (`command()`, returning its exit code or None) as `hypenet` and every `python -m
    hypenet.X` run one: an input the user must fix is one line on stderr and exit code 2 (argparse's for a usage
    error), with no traceback."""
    import sys

    try:
        return int(command() or 0)
    except (MissingInputError, InvalidInputError) as error:  # a path that is not there, a value that cannot work
        print(f"error: {error}", file=sys.stderr)
        return 2


def first_line(error: BaseException) -> str:
    """An error's message as a report row or a log line gives it: its first line ("" when it has none)."""
    return (str(error).splitlines() or [""])[0]


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, or a kernel library's RuntimeError that says the device ran out: Triton raises
    "Triton Error [CUDA]: out of memory" when a kernel (or its autotuning) cannot get memory, as a
    flash-linear-attention kernel's autotuning did in stage 2 at the 2B shape on an H100, after torch's errors had
    taken the micro batch from 96 to 24 (results/gpu_convert/train_speed/oom_backoff/)."""
    import torch

    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())
