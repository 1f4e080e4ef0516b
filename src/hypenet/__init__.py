"""hypenet: convert a pretrained Transformer into a HypeNet hybrid with the HALO pipeline.

Importing the model (`from hypenet import HypeNetForCausalLM`, or anything from `hypenet.model`) registers HypeNet with
transformers' Auto classes. `import hypenet` alone imports neither torch nor transformers, so that the `hypenet`
command answers --help and argument errors at once.
"""

from ._lazy import lazy_names

__version__ = "0.1.0"

# the model (torch, transformers) loads when one of its classes is first asked for
__getattr__, __dir__ = lazy_names(__name__, globals(), dict.fromkeys(
    ("HypeNetConfig", "HypeNetForCausalLM", "HypeNetModel"), "model"))

__all__ = ["HypeNetConfig", "HypeNetForCausalLM", "HypeNetModel", "__version__"]
