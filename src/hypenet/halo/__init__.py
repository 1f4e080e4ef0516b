"""HALO: convert a pretrained Transformer into a HypeNet hybrid (SPEC section 3).

    from hypenet.halo import convert, load_config
    convert(load_config("cpu", out="runs/cpu"))          # the same as `hypenet convert --preset cpu --out runs/cpu`

config    typed settings: stages, presets, YAML files, KEY=VALUE overrides
engine    the one training loop (accelerate, AdamW, schedule, checkpoints, resume)
stage1/2/3  what each trained stage optimises; select and export: layer choice and the HF checkpoint
pipeline  every stage in order, into one output folder; cli: the `hypenet convert|stage1|...` commands
"""

from .config import ConvertConfig, HaloError, load_config

_PIPELINE_NAMES = ("STAGES", "convert", "run_stages")


def __getattr__(name: str):
    """PEP 562: the pipeline (torch, accelerate) loads when first asked for, not with the command line's parser."""
    if name in _PIPELINE_NAMES:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["STAGES", "ConvertConfig", "HaloError", "convert", "load_config", "run_stages"]
