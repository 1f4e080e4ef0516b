"""Lightning Attention: the linear-attention RNN of HypeNet's RNN layers (SPEC.md section 2.1).

Per batch element b and head h, with a log decay g_t <= 0 per token:

    S_t = exp(g_t) * S_{t-1} + k_t^T v_t        # K x V state, fp32 (fp64 for fp64 inputs)
    o_t = scale * q_t S_t

HypeNet's decay is fixed per head (`alibi_log_decay`); the model passes it broadcast over tokens,
with g = 0 (and k = v = 0) at padded positions so that padding neither decays nor writes the state.

Three implementations of the same recurrence:
- `lightning_attention_recurrent`: token by token; the decoding step, and the reference for the others.
- `lightning_attention_chunked`: chunked-parallel plain PyTorch; prefill and training on any device.
- flash-linear-attention's `simple_gla` Triton kernels (optional, CUDA), picked by `lightning_attention`.

This file is a leaf: it imports only torch and the standard library (fla lazily), because it is
copied next to modeling_hypenet.py into every exported checkpoint.
"""

import math

import torch
import torch.nn.functional as F

FLA_INSTALL_HINT = "pip install flash-linear-attention  (needs a CUDA GPU and triton), or pass backend='torch'"


def alibi_log_decay(num_heads: int) -> torch.Tensor:
    """Per-head log decay g_h = -slope_h, float32 [num_heads], with ALiBi's slope sequence.

    For H a power of two, slope_h = 2**(-8h/H), h = 1..H. Otherwise ALiBi's rule: with n the largest
    power of two <= H, take the n slopes of n heads, then every other slope of 2n heads for the rest.
    The decay per token is gamma_h = exp(g_h).
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")

    def power_of_two_slopes(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    n = 1 << (num_heads.bit_length() - 1)
    slopes = power_of_two_slopes(n) + power_of_two_slopes(2 * n)[0::2][: num_heads - n]
    return -torch.tensor(slopes, dtype=torch.float32)


def _state_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _initial_state(q, v, initial_state, dtype):
    if initial_state is not None:
        return initial_state.to(dtype)
    batch, _, heads, k_dim = q.shape
    return torch.zeros(batch, heads, k_dim, v.shape[-1], dtype=dtype, device=q.device)


def lightning_attention_recurrent(q, k, v, g, scale, initial_state=None, output_final_state=True):
    """Token-by-token recurrence: the decoding step (T == 1) and the reference for the other forms.

    q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H]; initial_state: [B, H, K, V] or None.
    Returns (o [B, T, H, V] in q.dtype, final state [B, H, K, V] in fp32/fp64, or None).
    """
    dtype = _state_dtype(q)
    S = _initial_state(q, v, initial_state, dtype)
    outputs = []
    for t in range(q.shape[1]):
        q_t, k_t, v_t, g_t = (x[:, t].to(dtype) for x in (q, k, v, g))
        S = g_t.exp()[..., None, None] * S + k_t[..., :, None] * v_t[..., None, :]
        outputs.append(scale * torch.einsum("bhk,bhkv->bhv", q_t, S))
    o = torch.stack(outputs, dim=1).to(q.dtype)
    return o, (S if output_final_state else None)


def lightning_attention_chunked(q, k, v, g, scale, initial_state=None, output_final_state=True, chunk_size=64):
    """Chunked-parallel form of the same recurrence (same arguments and results as the recurrent one).

    Within a chunk of C tokens, with G_i the cumulative log decay up to token i of the chunk,
        o_i = scale * (exp(G_i) q_i S_in + sum_{j <= i} exp(G_i - G_j) (q_i . k_j) v_j)
        S_out = exp(G_C) S_in + sum_j exp(G_C - G_j) k_j^T v_j
    The first two terms' within-chunk parts run for all chunks at once; only S_in is a scan over chunks.
    """
    dtype = _state_dtype(q)
    batch, seq_len, heads, _ = q.shape
    num_chunks = math.ceil(seq_len / chunk_size)
    pad = num_chunks * chunk_size - seq_len

    def to_chunks(x):  # [B, T, H, D] -> [B, H, N, C, D]; the padded tail has k = v = 0 and g = 0
        x = F.pad(x.to(dtype).transpose(1, 2), (0, 0, 0, pad))
        return x.reshape(batch, heads, num_chunks, chunk_size, x.shape[-1])

    qc, kc, vc = to_chunks(q), to_chunks(k), to_chunks(v)
    G = to_chunks(g[..., None])[..., 0].cumsum(-1)  # [B, H, N, C]

    # Within-chunk decayed causal scores; masking above the diagonal before exp keeps it from overflowing.
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, -math.inf).exp()
    o = ((qc @ kc.transpose(-1, -2)) * decay) @ vc  # [B, H, N, C, V]

    # What each chunk alone writes into the state, and how much it decays what came before it.
    chunk_states = (kc * (G[..., -1:] - G).exp()[..., None]).transpose(-1, -2) @ vc  # [B, H, N, K, V]
    chunk_decay = G[..., -1].exp()[..., None, None]  # [B, H, N, 1, 1]
    q_decayed = qc * G.exp()[..., None]

    S = _initial_state(q, v, initial_state, dtype)
    inter_chunk = []
    for n in range(num_chunks):
        inter_chunk.append(q_decayed[:, :, n] @ S)
        S = chunk_decay[:, :, n] * S + chunk_states[:, :, n]
    o = scale * (o + torch.stack(inter_chunk, dim=2))

    o = o.reshape(batch, heads, num_chunks * chunk_size, -1)[:, :, :seq_len].transpose(1, 2)
    return o.to(q.dtype), (S if output_final_state else None)


_fla_available: bool | None = None  # whether fla's kernels import: found by the first call of _fla_importable


def _fla_importable() -> bool:
    """Whether flash-linear-attention's kernels import, tried once per process.

    The answer is kept in a module global, not behind functools.cache: a compiled layer (`compile: true`) reads the
    global as a constant, guarded, where it would trace through a cached function (dynamo warns about each such call).
    """
    global _fla_available
    if _fla_available is None:
        _fla_available = _import_fla()
    return _fla_available


@torch.compiler.disable  # a first call inside a compiled layer runs the import eagerly
def _import_fla() -> bool:
    try:
        import fla.ops.simple_gla  # noqa: F401
    except ImportError:
        return False
    return True


def kernel_input_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.dtype:
    """The one dtype q, k and v enter the fla kernels in (their matmuls need equal operand types).

    Under autocast (mixed-precision training, where the QK norms return fp32 but v_proj returns bf16) it is the
    autocast dtype, as for a matmul; otherwise the promotion of the three; fp32 for dtypes fla does not take.
    """
    if torch.is_autocast_enabled(q.device.type):
        common = torch.get_autocast_dtype(q.device.type)
    else:
        common = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    return common if common in (torch.float32, torch.bfloat16, torch.float16) else torch.float32


@torch.compiler.disable  # compiled layers (training with `compile: true`) call the Triton kernels as they are
def _lightning_attention_fla(q, k, v, g, scale, initial_state, output_final_state, g_gamma):
    try:
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
    except ImportError as error:
        raise ImportError(f"backend='fla' needs flash-linear-attention ({error}): {FLA_INSTALL_HINT}") from error
    if q.device.type == "cpu":
        raise ValueError("backend='fla' runs Triton kernels on a GPU; for CPU tensors pass backend='torch'")
    # fla computes in fp32 internally; it takes fp32/bf16/fp16 inputs of one dtype, an fp32 decay and an fp32 state.
    out_dtype = q.dtype
    common = kernel_input_dtype(q, k, v)
    q, k, v = q.to(common), k.to(common), v.to(common)
    decay = {"g_gamma": g_gamma.float()} if g_gamma is not None else {"g": g.float()}
    kernel = fused_recurrent_simple_gla if q.shape[1] == 1 else chunk_simple_gla
    o, final_state = kernel(
        q, k, v, **decay, scale=scale,
        initial_state=None if initial_state is None else initial_state.float(),
        output_final_state=output_final_state,
    )
    return o.to(out_dtype), final_state


def lightning_attention(
    q, k, v, g, scale, initial_state=None, output_final_state=True, backend="auto", chunk_size=64, g_gamma=None,
):
    """Lightning Attention (simple gated linear attention with a per-token, head-wise log decay).

    q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H] log decay per token (<= 0);
    scale: multiplied into q . k (1/sqrt(K) in HypeNet); initial_state: [B, H, K, V] or None (zeros).
        S_t = exp(g_t) * S_{t-1} + k_t^T v_t ;  o_t = scale * q_t S_t
    Returns (o [B, T, H, V] in q.dtype, final state [B, H, K, V] in fp32 (fp64 for fp64 inputs) or None).

    backend: "torch" (chunked for T > 1, recurrent for T == 1; any device), "fla" (flash-linear-attention's
    Triton kernels) or "auto" ("fla" for CUDA tensors when fla is importable, else "torch"). All differentiable.
    g_gamma: optional [H] hint that g is the same for every token (no padding); the fla backend then uses
    its faster constant-decay kernels. The torch backend always reads g. chunk_size: torch backend only.
    """
    if backend == "auto":
        backend = "fla" if q.is_cuda and _fla_importable() else "torch"
    if backend == "fla":
        return _lightning_attention_fla(q, k, v, g, scale, initial_state, output_final_state, g_gamma)
    if backend != "torch":
        raise ValueError(f"unknown backend {backend!r}; choose 'auto', 'torch' or 'fla'")
    if q.shape[1] == 1:
        return lightning_attention_recurrent(q, k, v, g, scale, initial_state, output_final_state)
    return lightning_attention_chunked(q, k, v, g, scale, initial_state, output_final_state, chunk_size)
