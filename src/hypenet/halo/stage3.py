"""HALO stage 3, long-context finetuning: plain next-token cross-entropy at long context, no teacher.

The whole model is trained; gradient checkpointing (per decoder layer) and sliced logits keep memory bounded at
long context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..model import HypeNetForCausalLM
from .losses import LogitsCrossEntropy, chunked_cross_entropy

if TYPE_CHECKING:
    from .pipeline import Conversion


class LanguageModeling(nn.Module):
    """Stage 3's objective: the model; forward returns the mean next-token cross-entropy."""

    _no_split_modules = ["HypeNetDecoderLayer"]  # FSDP2's shard units (halo/engine.py): the model's layers

    def __init__(self, model: HypeNetForCausalLM, logits_chunk: int, gradient_checkpointing: bool):
        super().__init__()
        self.model = model
        self.logits_chunk = logits_chunk
        self.cross_entropy = LogitsCrossEntropy()
        if gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.model.model(input_ids=input_ids, use_cache=False).last_hidden_state
        return chunked_cross_entropy(hidden[:, :-1], input_ids[:, 1:], self.model.lm_head, self.logits_chunk,
                                     self.cross_entropy)

    def layers_to_compile(self) -> list[nn.Module]:
        """With `compile: true` (halo/compiling.py): the model's decoder layers, or with gradient checkpointing the
        parts of each inside its checkpoint (a compiled layer would trace the checkpoint itself, whose body cannot
        be split around the fla kernels that stay outside the graph); and the cross-entropy."""
        layers = self.model.model.layers
        if not self.model.is_activation_checkpointing:
            return [*layers, self.cross_entropy]
        return [*(part for layer in layers
                  for part in (layer.input_layernorm, layer.mixer, layer.post_attention_layernorm, layer.mlp)),
                self.cross_entropy]


def run(conv: Conversion) -> dict:
    """Finetune the stage-2 model at long context and save it as the stage's result."""
    model = conv.load_model("stage2")
    objective = LanguageModeling(model, conv.config.stage3.logits_chunk, conv.config.stage3.gradient_checkpointing)
    result = conv.train("stage3", objective, conv.config.stage3)
    model.activation_checkpointing_disable()
    conv.save_model(model, result.weights("model"), "stage3")
    return result.summary()
