"""HALO stage 2, distillation: the hybrid student learns the frozen teacher's next-token distributions.

Student: the selected layers keep the teacher's attention (RoPE removed, new output gate; with
stage1.align_attention, stage 1's attention student of that layer), all others take their stage-1 lightning layer.
Loss: token-level forward KL(teacher || student) at temperature 1, averaged over all tokens of the batch. The whole
student is trained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import PreTrainedModel

from ..model import HypeNetForCausalLM
from ..teachers import build_hypenet_from_teacher
from . import stage1
from .losses import LogitsKL, chunked_kl

if TYPE_CHECKING:
    from .pipeline import Conversion


class Distillation(nn.Module):
    """Stage 2's objective: the student; forward returns KL(teacher || student) per token."""

    _no_split_modules = ["HypeNetDecoderLayer"]  # FSDP2's shard units (halo/engine.py): the student's layers

    def __init__(self, student: HypeNetForCausalLM, teacher: PreTrainedModel, logits_chunk: int):
        super().__init__()
        self.student = student
        self.logits_chunk = logits_chunk
        self.kl = LogitsKL()
        self._teacher = (teacher,)  # a tuple hides it from nn.Module: frozen, never wrapped or checkpointed

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        teacher = self._teacher[0]
        with torch.no_grad():
            teacher_hidden = teacher.model(input_ids=input_ids, use_cache=False).last_hidden_state
        student_hidden = self.student.model(input_ids=input_ids, use_cache=False).last_hidden_state
        return chunked_kl(student_hidden, teacher_hidden, self.student.lm_head, teacher.lm_head, self.logits_chunk,
                          self.kl)

    def layers_to_compile(self) -> list[nn.Module]:
        """With `compile: true` (halo/compiling.py): the student's and the teacher's decoder layers, and the KL."""
        return [*self.student.model.layers, *self._teacher[0].model.layers, self.kl]


def run(conv: Conversion, attention_layers: list[int]) -> dict:
    """Build the hybrid from the teacher and the stage-1 layers, distil it, and save it as the stage's result."""
    teacher = conv.teacher
    mixer_types = ["attention" if i in attention_layers else "lightning"
                   for i in range(teacher.config.num_hidden_layers)]
    torch.manual_seed(conv.config.seed)  # the attention output gates' initialisation (unless stage 1 trained them)
    student = build_hypenet_from_teacher(
        teacher, mixer_types, lightning_layers=conv.stage1_layers(),
        attention_layers=conv.stage1_layers(stage1.ATTENTION_LAYERS_FILE),
        attention_rope=conv.config.attention_rope).float()
    objective = Distillation(student, teacher, conv.config.stage2.logits_chunk)
    result = conv.train("stage2", objective, conv.config.stage2)
    conv.save_model(student, result.weights("student"), "stage2")
    return result.summary()
