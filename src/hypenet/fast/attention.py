"""Softmax attention for the fast path: prefill chunks over a cached prefix, and single-token decode over a long cache.

Decode reads a static cache of `max_len` slots of which row b uses slots [start[b], end[b]) (left padding starts a
row late; `end` is the slot after the newest token). Two implementations of the same function:
- `decode_attention_reference`: SDPA over the whole buffer with a validity mask; any device, the reference.
- `decode_attention_triton`: split-KV ("flash-decoding") Triton kernels that read only the valid slots. One program
  per (batch row, KV head, split) takes its share of the valid slots for all query heads of its group, so a batch-1
  decode still spreads a long cache over every SM; a second kernel merges the splits by their log-sum-exp.
  Lengths are read on the device, so the launch is the same at every step and can be captured in a CUDA graph.
`decode_attention` is a torch custom op that picks the kernel on CUDA (when Triton is there): torch.compile sees
it as one opaque node.

This file imports only torch and (lazily) triton: kernels never import models.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      split: bool | None = None) -> torch.Tensor:
    """Causal attention of T new queries over S >= T keys whose last T are the queries' own tokens.

    q: [B, Hq, T, d]; k, v: [B, Hkv, S, d]. With S == T this is plain causal attention; otherwise the causal mask
    is aligned to the bottom-right corner (query i sees keys 0 .. S - T + i). Two ways to compute that:
    - split (the default where cuDNN's attention is usable: CUDA, bf16/fp16): the cached prefix (keys 0 .. S - T,
      no mask) and the chunk's own keys (a square causal block) separately, each with cuDNN's fused kernel, merged
      by their log-sum-exps. cuDNN ran a causal 64K block ~1.6x faster than the flash kernel that the bottom-right
      mask gets (H200, results/fast_bench/check), and prefill at long context is almost all this attention.
    - otherwise SDPA with a bottom-right causal mask (its flash or memory-efficient kernel, no T x S mask).
    split=True forces the split (elsewhere with `attention_with_lse`'s plain computation: tests), False the mask.
    Both take equal head counts, so GQA keys/values are repeated (a copy of the prefix, small next to the
    attention's arithmetic).
    """
    if q.shape[1] != k.shape[1]:
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if q.shape[2] == k.shape[2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if split or (split is None and cudnn_split_usable(q)):
        return _split_prefill_attention(q, k, v, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q.shape[2], k.shape[2]), scale=scale)


def _split_prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """prefill_attention as the prefix's attention and the chunk's causal attention, merged (equal head counts)."""
    prefix = k.shape[2] - q.shape[2]
    o_prefix, lse_prefix = attention_with_lse(q, k[:, :, :prefix], v[:, :, :prefix], scale, is_causal=False)
    o_chunk, lse_chunk = attention_with_lse(q, k[:, :, prefix:], v[:, :, prefix:], scale, is_causal=True)
    return merge_attention(o_prefix, lse_prefix, o_chunk, lse_chunk)


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                       is_causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention ([B, H, T, d], q's dtype) and each query's log-sum-exp of its scores ([B, H, T], fp32).

    Equal head counts; is_causal: a square block, top-left aligned. cuDNN's fused kernel on CUDA in bf16/fp16 (its
    log-sum-exp comes from an internal op of PyTorch's SDPA, hence `cudnn_split_usable`'s check), elsewhere the
    plain computation, which materialises the T x S scores: for tests and small inputs only.
    """
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, True, 0.0, is_causal, False, scale=scale)[:2]
        return out, lse.reshape(q.shape[:3]).float()
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if is_causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), -math.inf)
    lse = scores.logsumexp(dim=-1)
    return ((scores - lse[..., None]).exp() @ v.float()).to(q.dtype), lse


def merge_attention(o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """Attention over the union of two disjoint key sets, from each set's output and log-sum-exp: the outputs
    weighted by each set's share of the softmax mass, sigmoid(lse_a - lse_b) and its complement (fp32)."""
    share_a = torch.sigmoid(lse_a - lse_b)[..., None]
    o_b = o_b.float()
    return (o_b + (o_a.float() - o_b) * share_a).to(o_a.dtype)


@functools.cache
def _cudnn_split_checked(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the split prefill runs here and equals the bottom-right-mask path on a small random case: the
    log-sum-exp comes from an internal op whose signature or layout could change between PyTorch versions; any
    doubt falls back to the mask path."""
    generator = torch.Generator(device=device).manual_seed(0)
    # the engine's layouts: queries a transposed [B, T, H, d] projection, keys/values a window of a cache buffer
    q = torch.randn(2, 96, 4, 64, device=device, dtype=dtype, generator=generator).transpose(1, 2)
    k, v = torch.randn(2, 2, 4, 400, 64, device=device, dtype=dtype, generator=generator)[:, :, :, 16:368].unbind(0)
    try:
        out = _split_prefill_attention(q, k, v, 0.125).float()
    except (RuntimeError, TypeError, ValueError):
        return False
    ref = prefill_attention(q.double(), k.double(), v.double(), 0.125, split=False)
    return bool(((out - ref).norm() / ref.norm()).item() < 1e-2)


def cudnn_split_usable(q: torch.Tensor) -> bool:
    """prefill_attention's default: split into prefix + chunk blocks through cuDNN (CUDA, bf16/fp16, checked once
    per device and dtype)."""
    if not (q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)):
        return False
    if not torch.backends.cuda.cudnn_sdp_enabled():
        return False
    return _cudnn_split_checked(q.device, q.dtype)


def decode_attention_reference(q, k_cache, v_cache, start, end, scale: float) -> torch.Tensor:
    """One query per row over the valid slots of a static cache.

    q: [B, Hq, d]; k_cache, v_cache: [B, Hkv, L, d]; start, end: [B] integer, slots start[b] <= j < end[b] are
    attended (end > start). Returns [B, Hq, d] in q.dtype.
    """
    slots = torch.arange(k_cache.shape[2], device=q.device)
    valid = (slots >= start[:, None]) & (slots < end[:, None])  # [B, L]
    o = F.scaled_dot_product_attention(
        q[:, :, None], k_cache, v_cache, attn_mask=valid[:, None, None, :], scale=scale,
        enable_gqa=q.shape[1] != k_cache.shape[1],
    )
    return o[:, :, 0]


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _programmatic_launch_capable(device_index: int) -> bool:
    if torch.cuda.get_device_capability(device_index) < (9, 0):
        return False
    from triton.language.extra import cuda

    return hasattr(cuda, "gdc_wait") and hasattr(cuda, "gdc_launch_dependents")


def programmatic_launch_usable(device: torch.device | str) -> bool:
    """Whether this package's Triton kernels can be launched with programmatic dependent launch (PDL) on `device`:
    CUDA with compute capability 9.0 or later (Hopper) and a Triton with gdc_wait. A kernel launched so may start
    while the kernel before it in the stream still runs; it waits for that kernel's results (gdc_wait) before it
    reads them, and lets the kernel after it start early (gdc_launch_dependents)."""
    device = torch.device(device)
    if device.type != "cuda" or not triton_available():
        return False
    return _programmatic_launch_capable(device.index if device.index is not None else torch.cuda.current_device())


def programmatic_launch_options(pdl: bool, device: torch.device) -> dict:
    """A kernel launch's PDL options: USE_GDC (the kernel's constexpr switch for gdc_wait / gdc_launch_dependents)
    and Triton's launch_pdl. pdl on a CUDA device that cannot (`programmatic_launch_usable`) raises; off CUDA (Triton's
    CPU interpreter) the kernel runs without them."""
    if not pdl or device.type != "cuda":
        return {"USE_GDC": False}
    if not programmatic_launch_usable(device):
        raise ValueError(f"programmatic dependent launch needs compute capability 9.0 or later and a Triton with "
                         f"gdc_wait; {torch.cuda.get_device_name(device)} cannot: run with pdl=False")
    return {"USE_GDC": True, "launch_pdl": True}


@functools.cache
def _multiprocessor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def default_num_splits(batch: int, kv_heads: int, max_len: int, device: torch.device, block_n: int = 64) -> int:
    """Enough (row, KV head, split) programs to give every SM about four, never more splits than key blocks."""
    sms = _multiprocessor_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 4
    wanted = -(-4 * sms // (batch * kv_heads))
    return max(1, min(wanted, -(-max_len // block_n), 256))


@functools.cache
def _kernels():
    """Build the Triton kernels on first use (importing triton only when a kernel is asked for)."""
    import triton
    import triton.language as tl

    @triton.jit
    def split_kv_kernel(
        Q, K, V, Start, End, PartOut, PartLse,
        stride_qb, stride_qh, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
        stride_pb, stride_ph, stride_ps, stride_lb, stride_lh,
        scale, num_kv_heads, num_splits,
        GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IEEE_DOT: tl.constexpr, USE_GDC: tl.constexpr,
    ):
        if USE_GDC:  # launched with PDL: wait for the kernel before (q, the new slot), let the next one start
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        row_head = tl.program_id(0)
        split = tl.program_id(1)
        b = row_head // num_kv_heads
        kv_head = row_head % num_kv_heads
        start = tl.load(Start + b).to(tl.int32)
        end = tl.load(End + b).to(tl.int32)
        # This split's share of the valid slots, a whole number of key blocks.
        per_split = tl.cdiv(tl.cdiv(end - start, num_splits), BLOCK_N) * BLOCK_N
        lo = start + split * per_split
        hi = tl.minimum(lo + per_split, end)

        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, BLOCK_D)
        g_mask = g < GROUP
        d_mask = d < HEAD_DIM
        heads = kv_head * GROUP + g
        q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                    mask=g_mask[:, None] & d_mask[None, :], other=0.0)
        k_base = K + b.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
        v_base = V + b.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh

        m = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
        for n0 in range(lo, hi, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            n_mask = n < hi
            kv_mask = n_mask[:, None] & d_mask[None, :]
            offsets = n.to(tl.int64)[:, None] * stride_kn + d[None, :]
            k = tl.load(k_base + offsets, mask=kv_mask, other=0.0)
            if IEEE_DOT:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = tl.where(n_mask[None, :], s * scale, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new[:, None])
            l = l * alpha + tl.sum(p, 1)
            v = tl.load(v_base + n.to(tl.int64)[:, None] * stride_vn + d[None, :], mask=kv_mask, other=0.0)
            if IEEE_DOT:
                pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m = m_new

        has_keys = l > 0  # a split past the valid slots saw none: weight 0 in the merge
        l_safe = tl.where(has_keys, l, 1.0)
        out = acc / l_safe[:, None]
        lse = tl.where(has_keys, m + tl.log(l_safe), float("-inf"))
        part = PartOut + b * stride_pb + heads[:, None] * stride_ph + split * stride_ps + d[None, :]
        tl.store(part, out, mask=g_mask[:, None] & d_mask[None, :])
        tl.store(PartLse + b * stride_lb + heads * stride_lh + split, lse, mask=g_mask)

    @triton.jit
    def merge_splits_kernel(
        PartOut, PartLse, Out,
        stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ob, stride_oh,
        num_heads, num_splits,
        BLOCK_S: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, USE_GDC: tl.constexpr,
    ):
        if USE_GDC:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        row_head = tl.program_id(0)
        b = row_head // num_heads
        h = row_head % num_heads
        s = tl.arange(0, BLOCK_S)
        d = tl.arange(0, BLOCK_D)
        s_mask = s < num_splits
        d_mask = d < HEAD_DIM
        lse = tl.load(PartLse + b * stride_lb + h * stride_lh + s, mask=s_mask, other=float("-inf"))
        weight = tl.exp(lse - tl.max(lse, 0))
        part = tl.load(PartOut + b * stride_pb + h * stride_ph + s[:, None] * stride_ps + d[None, :],
                       mask=s_mask[:, None] & d_mask[None, :], other=0.0)
        out = tl.sum(part * weight[:, None], 0) / tl.sum(weight, 0)
        tl.store(Out + b * stride_ob + h * stride_oh + d, out.to(Out.dtype.element_ty), mask=d_mask)

    return triton, split_kv_kernel, merge_splits_kernel


def decode_attention_triton(
    q, k_cache, v_cache, start, end, scale: float,
    num_splits: int | None = None, block_n: int = 64, num_warps: int = 4, num_stages: int = 2, pdl: bool = False,
) -> torch.Tensor:
    """The split-KV kernels; same arguments and result as `decode_attention_reference`.

    Needs q and the caches' last dim contiguous. fp32 inputs use full-precision (IEEE) dots, not TF32.
    pdl: both kernels launched with programmatic dependent launch (`programmatic_launch_options`).
    """
    triton, split_kv_kernel, merge_splits_kernel = _kernels()
    batch, num_heads, head_dim = q.shape
    kv_heads, max_len = k_cache.shape[1], k_cache.shape[2]
    if q.stride(-1) != 1 or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("decode_attention_triton needs q, k_cache and v_cache contiguous in the head dim")
    group = num_heads // kv_heads
    if num_splits is None:
        num_splits = default_num_splits(batch, kv_heads, max_len, q.device, block_n)
    part_out = torch.empty(batch, num_heads, num_splits, head_dim, device=q.device, dtype=torch.float32)
    part_lse = torch.empty(batch, num_heads, num_splits, device=q.device, dtype=torch.float32)
    out = torch.empty_like(q)
    block_d = max(16, triton.next_power_of_2(head_dim))
    launch = programmatic_launch_options(pdl, q.device)
    split_kv_kernel[(batch * kv_heads, num_splits)](
        q, k_cache, v_cache, start, end, part_out, part_lse,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        scale, kv_heads, num_splits,
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n,
        HEAD_DIM=head_dim, BLOCK_D=block_d, IEEE_DOT=q.dtype == torch.float32,
        num_warps=num_warps, num_stages=num_stages, **launch,
    )
    merge_splits_kernel[(batch * num_heads,)](
        part_out, part_lse, out,
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        out.stride(0), out.stride(1), num_heads, num_splits,
        BLOCK_S=max(2, triton.next_power_of_2(num_splits)), HEAD_DIM=head_dim, BLOCK_D=block_d, **launch,
    )
    return out


@torch.library.custom_op("hypenet::decode_attention", mutates_args=())
def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: torch.Tensor, end: torch.Tensor, scale: float,
    pdl: bool = False,
) -> torch.Tensor:
    """Decode attention over the valid slots of a static cache: the Triton kernels on CUDA (pdl: launched with
    programmatic dependent launch), else the reference."""
    if q.is_cuda and triton_available():
        return decode_attention_triton(q.contiguous(), k_cache, v_cache, start.contiguous(), end.contiguous(), scale,
                                       pdl=pdl)
    return decode_attention_reference(q, k_cache, v_cache, start, end, scale)


@decode_attention.register_fake
def _(q, k_cache, v_cache, start, end, scale, pdl=False):
    return torch.empty_like(q)


__all__ = [
    "decode_attention",
    "decode_attention_reference",
    "decode_attention_triton",
    "default_num_splits",
    "attention_with_lse",
    "merge_attention",
    "prefill_attention",
    "programmatic_launch_options",
    "programmatic_launch_usable",
    "triton_available",
]
