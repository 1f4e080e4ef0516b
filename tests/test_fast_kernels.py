"""Attention of the fast path: prefill over a cached prefix and decode over a static cache, against plain softmax
attention; the split-KV Triton kernels through Triton's interpreter when triton is installed (GPU: scripts)."""

import math

import pytest
import torch
from conftest import in_triton_interpreter, needs_triton

from hypenet.fast.attention import (
    attention_with_lse,
    cudnn_split_usable,
    decode_attention,
    decode_attention_reference,
    merge_attention,
    prefill_attention,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def naive_attention(q, k, v, allowed, scale):
    """q [Hq, T, d], k/v [Hkv, S, d], allowed [T, S] bool: softmax attention in float64."""
    group = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(group, 0).double(), v.repeat_interleave(group, 0).double()
    scores = (q.double() @ k.transpose(-1, -2)) * scale
    return torch.softmax(scores.masked_fill(~allowed, -math.inf), dim=-1) @ v


@pytest.mark.parametrize("split", [False, True])  # True: the cuDNN path's prefix + chunk blocks merged by LSE
@pytest.mark.parametrize("queries,keys", [(7, 7), (5, 19), (1, 12), (16, 17)])
def test_prefill_attention_is_bottom_right_causal(queries, keys, split):
    torch.manual_seed(0)
    q = torch.randn(2, 6, queries, 16)
    k, v = torch.randn(2, 2, keys, 16), torch.randn(2, 2, keys, 16)
    out = prefill_attention(q, k, v, 0.25, split=split)
    allowed = torch.arange(keys)[None, :] <= (keys - queries + torch.arange(queries))[:, None]
    for b in range(2):
        expected = naive_attention(q[b], k[b], v[b], allowed, 0.25)
        assert (out[b].double() - expected).abs().max() < 1e-5


def test_merged_attention_of_two_key_sets_is_attention_over_both():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 3, 9, 8), torch.randn(2, 3, 20, 8), torch.randn(2, 3, 20, 8)
    first, second = attention_with_lse(q, k[:, :, :13], v[:, :, :13], 0.3, is_causal=False), \
        attention_with_lse(q, k[:, :, 13:], v[:, :, 13:], 0.3, is_causal=False)
    merged = merge_attention(*first, *second)
    expected, lse = attention_with_lse(q, k, v, 0.3, is_causal=False)
    assert (merged - expected).abs().max() < 1e-5
    assert (lse - torch.logsumexp((q @ k.transpose(-1, -2)) * 0.3, dim=-1)).abs().max() < 1e-5
    assert (expected - torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)).abs().max() < 1e-5


def test_split_prefill_is_used_only_where_cudnn_runs():
    q = torch.randn(1, 2, 4, 8)
    assert not cudnn_split_usable(q) and not cudnn_split_usable(q.bfloat16())  # CPU: the bottom-right mask path


def cache_case(batch=3, heads=6, kv_heads=2, head_dim=16, max_len=50, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    q = torch.randn(batch, heads, head_dim, dtype=dtype)
    k = torch.randn(batch, kv_heads, max_len, head_dim, dtype=dtype)
    v = torch.randn(batch, kv_heads, max_len, head_dim, dtype=dtype)
    start = torch.tensor([0, 9, 30][:batch])
    end = torch.tensor([50, 41, 31][:batch])
    return q, k, v, start, end


def expected_decode(q, k, v, start, end, scale):
    out = []
    for b in range(q.shape[0]):
        allowed = (torch.arange(k.shape[2]) >= start[b]) & (torch.arange(k.shape[2]) < end[b])
        out.append(naive_attention(q[b][:, None], k[b], v[b], allowed[None], scale)[:, 0])
    return torch.stack(out)


def test_decode_attention_reads_only_the_valid_slots():
    q, k, v, start, end = cache_case()
    expected = expected_decode(q, k, v, start, end, 0.25)
    assert (decode_attention_reference(q, k, v, start, end, 0.25).double() - expected).abs().max() < 1e-5
    assert (decode_attention(q, k, v, start, end, 0.25).double() - expected).abs().max() < 1e-5  # the custom op
    # garbage outside [start, end) changes nothing
    k2, v2 = k.clone(), v.clone()
    k2[1, :, :9], k2[2, :, 31:], v2[2, :, :30] = 1e4, -1e4, 1e4
    assert (decode_attention(q, k2, v2, start, end, 0.25).double() - expected).abs().max() < 1e-5


INTERPRETER_CHECK = """
from test_fast_kernels import cache_case, expected_decode
from hypenet.fast.attention import decode_attention_triton

for shape in (dict(heads=6, kv_heads=2, head_dim=16), dict(heads=9, kv_heads=3, head_dim=8),
              dict(heads=4, kv_heads=4, head_dim=32)):
    q, k, v, start, end = cache_case(**shape, max_len=70)
    expected = expected_decode(q, k, v, start, end, 0.3)
    for splits in (1, 3, 8):  # 8 splits of at most 70 slots: some splits see no key at all
        out = decode_attention_triton(q, k, v, start, end, 0.3, num_splits=splits, block_n=16)
        error = (out.double() - expected).abs().max().item()
        assert error < 1e-5, (shape, splits, error)
print("ok")
"""


@needs_triton
def test_split_kv_kernel_in_the_triton_interpreter():
    """The Triton kernels run by Triton's CPU interpreter (fp32: the interpreter's bf16 dot is not exact). A fresh
    process, because TRITON_INTERPRET must be set before triton is first imported."""
    in_triton_interpreter(INTERPRETER_CHECK)


def test_gpu_check_of_prefill_attention_runs_its_cases_on_cpu():
    from hypenet.fast.check import check_prefill

    rows = check_prefill(torch.float32, "cpu")
    assert [r["case"].split(" S=")[1] for r in rows] == ["4096 bottom-right mask", "4096 prefix + chunk merged",
                                                         "1000 bottom-right mask", "1000 prefix + chunk merged"]
    assert all(r["ok"] and r["rel_err"] < 1e-5 for r in rows), rows
