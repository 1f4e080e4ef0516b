"""hypenet: convert a pretrained Transformer into a HypeNet hybrid with the HALO pipeline.

Importing the model (`from hypenet import HypeNetForCausalLM`, or anything from `hypenet.model`) registers HypeNet with
transformers' Auto classes. `import hypenet` alone imports neither torch nor transformers, so that the `hypenet`
command answers --help and argument errors at once.
"""

__version__ = "0.1.0"

_MODEL_NAMES = ("HypeNetConfig", "HypeNetForCausalLM", "HypeNetModel")


def __getattr__(name: str):
    """PEP 562: the model (torch, transformers) loads when first asked for."""
    if name in _MODEL_NAMES:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["HypeNetConfig", "HypeNetForCausalLM", "HypeNetModel", "__version__"]
