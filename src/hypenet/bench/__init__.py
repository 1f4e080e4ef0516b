"""Benchmarks: prefill and decode speed, memory and the bandwidth floor, HypeNet against its teacher."""

import importlib

from .shapes import HYPENET_SHAPES, SHAPES, TEACHER_SHAPES, hypenet_config, random_model, teacher_config

_RUN_NAMES = ("BenchSettings", "fill_synthetic", "run")


def __getattr__(name: str):
    """PEP 562: the benchmark (torch, the fast engine, matplotlib) loads when first asked for, not with the command
    line's parser. `run` is then the function, as it was when this package imported it (the module of that name is
    hypenet.bench.run)."""
    if name in _RUN_NAMES:
        module = importlib.import_module(".run", __name__)
        globals().update({n: getattr(module, n) for n in _RUN_NAMES})
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HYPENET_SHAPES",
    "SHAPES",
    "TEACHER_SHAPES",
    "BenchSettings",
    "fill_synthetic",
    "hypenet_config",
    "random_model",
    "run",
    "teacher_config",
]
