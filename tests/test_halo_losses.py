"""Sliced losses against the plain full-logits computation: same value, same gradients."""

import torch
import torch.nn.functional as F
from torch import nn

from hypenet.halo.losses import chunked_cross_entropy, chunked_kl


def heads(seed=0, hidden=16, vocab=37):
    torch.manual_seed(seed)
    return nn.Linear(hidden, vocab, bias=False).double(), nn.Linear(hidden, vocab, bias=False).double()


def test_chunked_kl_matches_full_logits_kl_and_its_gradient():
    student_head, teacher_head = heads()
    student_hidden = torch.randn(3, 10, 16, dtype=torch.float64, requires_grad=True)
    teacher_hidden = torch.randn(3, 10, 16, dtype=torch.float64)

    student_logp = F.log_softmax(student_head(student_hidden), -1)
    teacher_p = F.softmax(teacher_head(teacher_hidden), -1)
    full = (teacher_p * (teacher_p.log() - student_logp)).sum(-1).mean()  # KL(teacher || student) per token
    full.backward()
    expected = student_hidden.grad.clone(), student_head.weight.grad.clone()
    student_hidden.grad, student_head.weight.grad, teacher_head.weight.grad = None, None, None

    sliced = chunked_kl(student_hidden, teacher_hidden, student_head, teacher_head, chunk_size=7)  # 30 tokens: 5 slices
    sliced.backward()
    # chunked_kl computes in fp32 (as in training), hence the tolerance
    torch.testing.assert_close(sliced, full.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(student_hidden.grad, expected[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(student_head.weight.grad, expected[1], rtol=1e-4, atol=1e-6)
    assert teacher_head.weight.grad is None  # the teacher side is a constant target


def test_chunked_cross_entropy_matches_full_cross_entropy_and_its_gradient():
    head, _ = heads(1)
    hidden = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 37, (2, 9))
    full = F.cross_entropy(head(hidden).reshape(-1, 37), labels.reshape(-1))
    full.backward()
    expected = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None

    sliced = chunked_cross_entropy(hidden, labels, head, chunk_size=4)
    sliced.backward()
    torch.testing.assert_close(sliced, full.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden.grad, expected[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head.weight.grad, expected[1], rtol=1e-4, atol=1e-6)
