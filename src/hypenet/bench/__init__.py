"""Benchmarks: prefill and decode speed, memory and the bandwidth floor, HypeNet against its teacher."""

from .run import BenchSettings, fill_synthetic, run
from .shapes import HYPENET_SHAPES, SHAPES, TEACHER_SHAPES, hypenet_config, random_model, teacher_config

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
