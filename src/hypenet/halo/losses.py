"""Token-level losses computed from final hidden states, a slice of tokens at a time.

The full logits of a batch ([tokens, vocab], e.g. 96 x 512 x 151,936 in fp32 = 30 GB) never exist at once: each
slice's logits are computed, reduced to a loss sum and dropped, and recomputed in the backward pass
(activation checkpointing), so memory stays bounded by one slice whatever the batch and context.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def _sum_over_slices(loss_sum: Callable[..., torch.Tensor], tensors: tuple[torch.Tensor, ...],
                     chunk_size: int) -> torch.Tensor:
    """sum_s loss_sum(*(t[s] for t in tensors)) over slices s of `chunk_size` rows, each slice checkpointed."""
    rows = tensors[0].shape[0]
    total = tensors[0].new_zeros((), dtype=torch.float32)
    for start in range(0, rows, chunk_size):
        pieces = tuple(t[start : start + chunk_size] for t in tensors)
        total = total + checkpoint(loss_sum, *pieces, use_reentrant=False)
    return total


class LogitsKL(nn.Module):
    """Summed KL(teacher || student) at temperature 1 over rows of logits, in fp32. A module (without weights) so
    that `compile: true` compiles it with the layers: the fp32 casts, both log-softmaxes and the KL then run as a few
    fused kernels instead of a dozen passes over [slice, vocab]."""

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        student_logp = F.log_softmax(student_logits.float(), dim=-1)
        teacher_logp = F.log_softmax(teacher_logits.float(), dim=-1)
        return F.kl_div(student_logp, teacher_logp, log_target=True, reduction="sum")


class LogitsCrossEntropy(nn.Module):
    """Summed cross-entropy of labels under rows of logits, in fp32 (a module for the same reason as LogitsKL)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, reduction="sum")


def chunked_kl(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    student_head: nn.Module,
    teacher_head: nn.Module,
    chunk_size: int = 1024,
    kl: nn.Module | None = None,
) -> torch.Tensor:
    """Forward KL(teacher || student) at temperature 1, averaged over all tokens.

    student_hidden, teacher_hidden: [..., hidden] final (normed) hidden states; *_head: the LM heads;
    kl: the LogitsKL module to use (a compiled one), or None for a plain one.
    """
    student_hidden = student_hidden.reshape(-1, student_hidden.shape[-1])
    teacher_hidden = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
    kl = LogitsKL() if kl is None else kl

    def kl_sum(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher_head(t)
        return kl(student_head(s), teacher_logits)

    return _sum_over_slices(kl_sum, (student_hidden, teacher_hidden), chunk_size) / student_hidden.shape[0]


def chunked_cross_entropy(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module, chunk_size: int = 1024,
                          cross_entropy: nn.Module | None = None) -> torch.Tensor:
    """Cross-entropy of `labels` under head(hidden), averaged over all tokens. hidden: [..., hidden]; labels: [...];
    cross_entropy: the LogitsCrossEntropy module to use, or None for a plain one."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    cross_entropy = LogitsCrossEntropy() if cross_entropy is None else cross_entropy

    def ce_sum(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cross_entropy(head(h), y)

    return _sum_over_slices(ce_sum, (hidden, labels), chunk_size) / hidden.shape[0]
