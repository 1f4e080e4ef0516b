"""HALO stage 1, hidden-state alignment: every teacher layer gets a lightning student trained to reproduce its
attention (SPEC section 3).

Student i sees the teacher's own normalised input to attention i (detached) and is fit by MSE to that attention's
output (after o_proj, before the residual). The teacher runs once per batch with its own attention, so all layers
train in parallel and independently; only the students are trained. With align_attention (not in the paper) every
layer also gets an attention student, HypeNet's attention (no RoPE, output gate) fit the same way, for stage 2 to
start from where attention is selected.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from ..model import HypeNetConfig, build_mixer_context
from ..model.modeling_hypenet import HypeNetAttention, HypeNetLightningAttention, HypeNetRotaryEmbedding
from ..teachers import attention_from_teacher, hypenet_config_from_teacher, lightning_from_teacher, teacher_attention

if TYPE_CHECKING:
    from .pipeline import Conversion

LAYERS_FILE = "lightning_layers.safetensors"
ATTENTION_LAYERS_FILE = "attention_layers.safetensors"  # with Stage1Config.align_attention


@torch.no_grad()
def teacher_attention_io(teacher: PreTrainedModel,
                         input_ids: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(inputs, outputs) of every teacher attention module for one forward pass: the normed hidden states it
    receives and what it adds to the residual stream."""
    num_layers = teacher.config.num_hidden_layers
    inputs, outputs = [None] * num_layers, [None] * num_layers

    def recorder(i):
        def record(module, args, kwargs, output):
            inputs[i] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            outputs[i] = output[0] if isinstance(output, tuple) else output  # (attn_output, attn_weights)

        return record

    handles = [teacher_attention(teacher, i).register_forward_hook(recorder(i), with_kwargs=True)
               for i in range(num_layers)]
    try:
        teacher.model(input_ids=input_ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return inputs, outputs


class LayerAlignment(nn.Module):
    """Stage 1's objective: the lightning students of all layers (and, with align_attention, an attention student
    per layer: the teacher's attention without RoPE, with the new output gate); forward returns the sum of their
    MSEs."""

    def __init__(self, teacher: PreTrainedModel, align_attention: bool = False):
        super().__init__()
        self.config = hypenet_config_from_teacher(teacher.config)  # all lightning, the teacher's dimensions
        layers = range(self.config.num_hidden_layers)
        self.students = nn.ModuleList(lightning_from_teacher(teacher, i, self.config).float() for i in layers)
        self.attention_students = nn.ModuleList(
            attention_from_teacher(teacher, i, self.config).float() for i in layers) if align_attention else None
        self.rotary = HypeNetRotaryEmbedding(self.config).to(next(teacher.parameters()).device)
        self._teacher = (teacher,)  # a tuple hides it from nn.Module: frozen, never wrapped or checkpointed
        # FSDP2's shard units (halo/engine.py): each layer's student
        self._no_split_modules = ["HypeNetLightningAttention"] + (["HypeNetAttention"] if align_attention else [])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        inputs, targets = teacher_attention_io(self._teacher[0], input_ids)
        ctx = build_mixer_context(self.config, self.rotary, inputs[0])  # positions 0..T-1 in every chunk
        students = [*self.students, *(self.attention_students or [])]
        losses = [F.mse_loss(student(x, ctx).float(), y.float())
                  for student, x, y in zip(students, inputs * 2, targets * 2)]
        return torch.stack(losses).sum()  # students are independent: each gets the gradient of its own MSE


def save_layers(weights: dict[str, torch.Tensor], stage_dir: Path, name: str = LAYERS_FILE) -> None:
    """weights: "{layer}.{parameter}" -> tensor, the state dict of LayerAlignment.students (or attention_students)."""
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(Path(stage_dir) / name))


def load_layers(stage_dir: Path, config: HypeNetConfig, device: str | torch.device = "cpu",
                name: str = LAYERS_FILE) -> dict[int, nn.Module]:
    """The trained students of every layer, by layer index (the stage's result): the lightning ones, or with
    name=ATTENTION_LAYERS_FILE the attention ones ({} when stage 1 trained none)."""
    path = Path(stage_dir) / name
    if name == ATTENTION_LAYERS_FILE and not path.is_file():
        return {}
    module = HypeNetLightningAttention if name == LAYERS_FILE else HypeNetAttention
    tensors = load_file(str(path))
    layers = {}
    for i in range(config.num_hidden_layers):
        layer = module(config, i)
        prefix = f"{i}."
        layer.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        layers[i] = layer.to(device)
    return layers


def run(conv: Conversion) -> dict:
    """Train the students of all layers; save them as the stage's result."""
    torch.manual_seed(conv.config.seed)  # the new output gates' initialisation
    objective = LayerAlignment(conv.teacher, conv.config.stage1.align_attention)
    result = conv.train("stage1", objective, conv.config.stage1)
    if conv.is_main_process:
        save_layers(result.weights("students"), conv.stage_dir("stage1"))
        if objective.attention_students is not None:
            save_layers(result.weights("attention_students"), conv.stage_dir("stage1"), ATTENTION_LAYERS_FILE)
    return result.summary()
