"""The lightning layer's decode step, in place: one token of the recurrence per (row, head), the state updated in its
own buffer.

    S <- exp(g) * S + k^T v        # [K, V] fp32 state per row and head, g the head's fixed log decay
    o  = scale * q S

Two implementations of the same function (`lightning_step`):
- `lightning_step_reference`: plain PyTorch (any device, any dtype): the recurrence of
  `hypenet.model.lightning.lightning_attention_recurrent` for one token, written into the state buffer.
- `lightning_step_triton`: one Triton kernel. Each program owns a [K, BLOCK_V] slice of one (row, head) state: it
  reads the slice once, writes the update back in place and reduces q against it for its BLOCK_V outputs. A decode
  step then reads and writes every state exactly once, in one launch, where the compiled reference takes several
  small kernels (the update, the write-back into the buffer, the reduction).
`lightning_step` is a torch custom op that mutates `state` and picks the kernel on CUDA (when Triton is there), so
torch.compile sees it as one opaque node and a CUDA graph captures its launch.

This file imports only torch and (lazily) triton: kernels never import models.
"""

from __future__ import annotations

import functools

import torch

from .attention import programmatic_launch_options, triton_available


def lightning_step_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                             state: torch.Tensor, scale: float) -> torch.Tensor:
    """q, k: [B, H, K]; v: [B, H, V]; log_decay: [H] (<= 0); state: [B, H, K, V], updated in place.
    Returns o [B, H, V] in q's dtype; the arithmetic is in the state's dtype."""
    dtype = state.dtype
    decay = log_decay.to(dtype).exp()[None, :, None, None]
    new_state = decay * state + k.to(dtype)[..., :, None] * v.to(dtype)[..., None, :]
    state.copy_(new_state)
    return (scale * torch.einsum("bhk,bhkv->bhv", q.to(dtype), new_state)).to(q.dtype)


@functools.cache
def _kernel():
    """Build the Triton kernel on first use (importing triton only when it is asked for)."""
    import triton
    import triton.language as tl

    @triton.jit
    def lightning_step_kernel(
        Q, K, V, LogDecay, State, Out,
        stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
        stride_sb, stride_sh, stride_sk, stride_ob, stride_oh,
        num_heads, scale,
        DIM_K: tl.constexpr, DIM_V: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
        USE_GDC: tl.constexpr,
    ):
        if USE_GDC:  # launched with PDL: wait for the kernel before (q, k, v), let the next one start
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        row_head = tl.program_id(0)
        b = row_head // num_heads
        h = row_head % num_heads
        i = tl.arange(0, BLOCK_K)
        j = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
        i_mask = i < DIM_K
        j_mask = j < DIM_V
        q = tl.load(Q + b * stride_qb + h * stride_qh + i, mask=i_mask, other=0.0).to(tl.float32)
        k = tl.load(K + b * stride_kb + h * stride_kh + i, mask=i_mask, other=0.0).to(tl.float32)
        v = tl.load(V + b * stride_vb + h * stride_vh + j, mask=j_mask, other=0.0).to(tl.float32)
        decay = tl.exp(tl.load(LogDecay + h).to(tl.float32))
        s_ptrs = State + b.to(tl.int64) * stride_sb + h.to(tl.int64) * stride_sh + i[:, None] * stride_sk + j[None, :]
        s_mask = i_mask[:, None] & j_mask[None, :]
        s = tl.load(s_ptrs, mask=s_mask, other=0.0)
        s = decay * s + k[:, None] * v[None, :]
        tl.store(s_ptrs, s, mask=s_mask)
        o = scale * tl.sum(q[:, None] * s, 0)
        tl.store(Out + b * stride_ob + h * stride_oh + j, o.to(Out.dtype.element_ty), mask=j_mask)

    return triton, lightning_step_kernel


def lightning_step_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                          state: torch.Tensor, scale: float, block_v: int = 32, num_warps: int = 4, pdl: bool = False
                          ) -> torch.Tensor:
    """The Triton kernel; same arguments and result as `lightning_step_reference`. Needs an fp32 state whose last
    two dims are contiguous, and q, k, v contiguous in their last dim. pdl: launched with programmatic dependent
    launch (`fast.attention.programmatic_launch_options`)."""
    triton, kernel = _kernel()
    batch, heads, dim_k = q.shape
    dim_v = v.shape[-1]
    if state.dtype != torch.float32:
        raise ValueError(f"lightning_step_triton keeps an fp32 state; got {state.dtype}")
    if state.stride(-1) != 1 or state.stride(-2) != dim_v or any(x.stride(-1) != 1 for x in (q, k, v)):
        raise ValueError("lightning_step_triton needs the state contiguous in its [K, V] dims and q, k, v "
                         "contiguous in the head dim")
    out = torch.empty(batch, heads, dim_v, device=q.device, dtype=q.dtype)
    block_v = min(block_v, triton.next_power_of_2(dim_v))
    kernel[(batch * heads, triton.cdiv(dim_v, block_v))](
        q, k, v, log_decay, state, out,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        state.stride(0), state.stride(1), state.stride(2), out.stride(0), out.stride(1),
        heads, scale,
        DIM_K=dim_k, DIM_V=dim_v, BLOCK_K=triton.next_power_of_2(dim_k), BLOCK_V=block_v,
        num_warps=num_warps, **programmatic_launch_options(pdl, q.device),
    )
    return out


def triton_step_usable(state: torch.Tensor) -> bool:
    return state.is_cuda and state.dtype == torch.float32 and triton_available()


@torch.library.custom_op("hypenet::lightning_step", mutates_args=("state",))
def lightning_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                   state: torch.Tensor, scale: float, pdl: bool = False) -> torch.Tensor:
    """One decode step of a lightning layer, state updated in place: the Triton kernel on CUDA (fp32 state; pdl:
    launched with programmatic dependent launch), else the reference."""
    if triton_step_usable(state):
        return lightning_step_triton(q.contiguous(), k.contiguous(), v.contiguous(), log_decay.contiguous(), state,
                                     scale, pdl=pdl)
    return lightning_step_reference(q, k, v, log_decay, state, scale)


@lightning_step.register_fake
def _(q, k, v, log_decay, state, scale, pdl=False):
    return q.new_empty(*q.shape[:-1], v.shape[-1])


__all__ = ["lightning_step", "lightning_step_reference", "lightning_step_triton", "triton_step_usable"]
