"""hypenet: convert a pretrained Transformer into a HypeNet hybrid with the HALO pipeline.

Importing hypenet registers HypeNet with transformers' Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .model import HypeNetConfig, HypeNetForCausalLM, HypeNetModel

__version__ = "0.1.0"

AutoConfig.register("hypenet", HypeNetConfig, exist_ok=True)
AutoModel.register(HypeNetConfig, HypeNetModel, exist_ok=True)
AutoModelForCausalLM.register(HypeNetConfig, HypeNetForCausalLM, exist_ok=True)
# save_pretrained writes auto_map and copies the modeling files, so checkpoints load with trust_remote_code alone.
HypeNetConfig.register_for_auto_class()
HypeNetModel.register_for_auto_class("AutoModel")
HypeNetForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["HypeNetConfig", "HypeNetForCausalLM", "HypeNetModel", "__version__"]
