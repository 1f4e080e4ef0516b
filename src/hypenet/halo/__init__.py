"""HALO: convert a pretrained Transformer into a HypeNet hybrid (SPEC section 3).

    from hypenet.halo import convert, load_config
    convert(load_config("cpu", out="runs/cpu"))          # the same as `hypenet convert --preset cpu --out runs/cpu`

config    typed settings: stages, presets, YAML files, KEY=VALUE overrides
engine    the one training loop (accelerate, AdamW, schedule, checkpoints, resume)
stage1/2/3  what each trained stage optimises; select and export: layer choice and the HF checkpoint
pipeline  every stage in order, into one output folder; cli: the `hypenet convert|stage1|...` commands
"""

from .._lazy import lazy_names
from .config import ConvertConfig, HaloError, load_config

# the pipeline (torch, accelerate) loads when one of these is first asked for
__getattr__, __dir__ = lazy_names(__name__, globals(), dict.fromkeys(("STAGES", "convert", "run_stages"), "pipeline"))


__all__ = ["STAGES", "ConvertConfig", "HaloError", "convert", "load_config", "run_stages"]
