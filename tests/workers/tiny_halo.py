"""The tiny random Qwen3 teacher and the HALO objectives around it that the multi-process workers train
(fsdp2_objectives.py, deepspeed_train.py): the same weights on every process and in the one-process reference."""

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from hypenet.halo import stage1, stage2, stage3
from hypenet.teachers import build_hypenet_from_teacher

MIXERS = ["lightning", "attention", "lightning"]


def tiny_teacher() -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                         tie_word_embeddings=True)
    return Qwen3ForCausalLM(config).eval().requires_grad_(False)


def objective(name: str, teacher: Qwen3ForCausalLM, student_weights: dict | None = None) -> torch.nn.Module:
    """Stage `name`'s objective (stage1, stage2..., stage3), its new weights (gates, lightning parts) seeded alike
    everywhere; `student_weights` (an earlier stage's, keys as that objective's) replace the student's."""
    torch.manual_seed(1)
    if name == "stage1":
        return stage1.LayerAlignment(teacher, align_attention=True)
    student = build_hypenet_from_teacher(teacher, MIXERS, lightning_layers=None).float()
    if student_weights is not None:  # as a conversion loads the last stage's student
        student.load_state_dict({k.removeprefix("student."): w for k, w in student_weights.items()})
    if name.startswith("stage2"):
        return stage2.Distillation(student, teacher, logits_chunk=32)
    return stage3.LanguageModeling(student, logits_chunk=32, gradient_checkpointing=True)
