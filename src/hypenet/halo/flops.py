"""Model FLOPs of the HALO stages: each stage's objective, built as the pipeline builds it, and its FLOP terms.

Shared by `hypenet bench-train` (MFU of measured steps) and `hypenet convert --plan` (a conversion's FLOPs and time
before it starts; there the teacher is a meta-device skeleton, so nothing is computed and no weight is read).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import ConvertConfig

if TYPE_CHECKING:  # (torch and the stages load with the objectives; bench-train's parser reads the H200 figure)
    from torch import nn

H200_DENSE_BF16_TFLOPS = 989.4  # NVIDIA's H200 SXM dense bf16 figure
FLOP_NOTE = (
    "Model FLOPs per token: 2N per frozen forward (teacher), 6N per trained forward+backward; N = weights and "
    "biases of the Linear layers (LM head included; a tied head counted once, as the head; the embedding lookup "
    "excluded). Attention-score FLOPs (QK^T, AV, the lightning recurrence) are left out of N, and "
    "gradient-checkpointing recompute is not counted (model FLOPs, not hardware FLOPs). Stage 1 runs the teacher "
    "without its LM head, so its 2N leaves the head out."
)


def matmul_parameters(*modules: nn.Module) -> int:
    """N of the 2N/6N count: parameters of the Linear layers of `modules`, each tensor once (a tied LM head is the
    embedding matrix: counted once, as the head; an embedding lookup does no matmul)."""
    from torch import nn

    seen = {}
    for module in modules:
        for linear in (m for m in module.modules() if isinstance(m, nn.Linear)):
            seen.update((id(p), p.numel()) for p in linear.parameters(recurse=False))
    return sum(seen.values())


def build_objective(name: str, teacher, mixer_types: list[str], config: ConvertConfig):
    """(the stage's objective, its FLOP terms [(what, factor, N)]) exactly as the pipeline builds them; the stage-2
    and stage-3 students come straight from the teacher (stage-1 layers and the stage-2 checkpoint have the same
    shapes as these fresh copies)."""
    import torch

    from ..teachers import build_hypenet_from_teacher
    from . import stage1, stage2, stage3

    torch.manual_seed(config.seed)
    if name == "stage1":
        objective = stage1.LayerAlignment(teacher, config.stage1.align_attention)
        trained = [objective.students, *([objective.attention_students] if objective.attention_students else [])]
        what = "lightning students of every layer" + (" and attention students" if len(trained) > 1 else "")
        return objective, [("teacher forward without the LM head (frozen)", 2, matmul_parameters(teacher.model)),
                           (f"{what} (trained)", 6, matmul_parameters(*trained))]
    student = build_hypenet_from_teacher(teacher, mixer_types, lightning_layers=None).float()
    if name == "stage2":
        objective = stage2.Distillation(student, teacher, config.stage2.logits_chunk)
        return objective, [("teacher forward with the LM head (frozen)", 2, matmul_parameters(teacher)),
                           ("student (trained)", 6, matmul_parameters(student))]
    objective = stage3.LanguageModeling(student, config.stage3.logits_chunk, config.stage3.gradient_checkpointing)
    return objective, [("student (trained)", 6, matmul_parameters(student))]
