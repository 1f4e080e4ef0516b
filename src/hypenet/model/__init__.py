"""The HypeNet model: config, modeling and the Lightning Attention kernels (self-contained: ships in checkpoints).

Importing it registers HypeNet with transformers' Auto classes (this file does not ship in checkpoints).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_hypenet import MIXER_TYPES, HypeNetConfig
from .modeling_hypenet import (
    HypeNetAttention,
    HypeNetCache,
    HypeNetForCausalLM,
    HypeNetLightningAttention,
    HypeNetModel,
    HypeNetPreTrainedModel,
    build_mixer_context,
)

AutoConfig.register("hypenet", HypeNetConfig, exist_ok=True)
AutoModel.register(HypeNetConfig, HypeNetModel, exist_ok=True)
AutoModelForCausalLM.register(HypeNetConfig, HypeNetForCausalLM, exist_ok=True)
# save_pretrained writes auto_map and copies the modeling files, so checkpoints load with trust_remote_code alone.
HypeNetConfig.register_for_auto_class()
HypeNetModel.register_for_auto_class("AutoModel")
HypeNetForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "MIXER_TYPES",
    "HypeNetAttention",
    "HypeNetCache",
    "HypeNetConfig",
    "HypeNetForCausalLM",
    "HypeNetLightningAttention",
    "HypeNetModel",
    "HypeNetPreTrainedModel",
    "build_mixer_context",
]
