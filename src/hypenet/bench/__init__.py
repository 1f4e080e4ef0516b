"""Benchmarks: prefill and decode speed, memory and the bandwidth floor, HypeNet against its teacher."""

from .._lazy import lazy_names
from .shapes import HYPENET_SHAPES, SHAPES, TEACHER_SHAPES, hypenet_config, random_model, teacher_config

# the benchmark (torch, the fast engine, matplotlib) loads when one of these is first asked for. `run` is then the
# function, as it was when this package imported it (the module of that name is hypenet.bench.run).
__getattr__, __dir__ = lazy_names(__name__, globals(), dict.fromkeys(("BenchSettings", "fill_synthetic", "run"), "run"))


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
