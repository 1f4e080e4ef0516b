"""The HypeNet model: config, modeling and the Lightning Attention kernels (self-contained: ships in checkpoints)."""

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
