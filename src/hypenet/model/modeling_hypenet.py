"""HypeNet: a pre-norm decoder mixing softmax attention and Lightning Attention RNN layers (SPEC section 2).

Every layer:  h = x + Mixer(RMSNorm(x));  out = h + MLP(RMSNorm(h)).
The mixer is `HypeNetAttention` (the teacher's GQA attention, NoPE by default, output gate, HyPE logit scaling)
or `HypeNetLightningAttention` (RoPE, QK-norm, MHA K/V, fixed ALiBi-slope decay, output norm + gate).

This file ships inside every exported checkpoint (transformers remote code): it imports only torch, transformers
and its two neighbours, configuration_hypenet.py and lightning.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, LinearAttentionLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import eager_attention_forward
from transformers.utils import logging

from .configuration_hypenet import HypeNetConfig
from .lightning import alibi_log_decay, lightning_attention

logger = logging.get_logger(__name__)


class HypeNetRMSNorm(nn.Module):
    """RMSNorm computed in fp32 and cast back, exactly as Llama/Qwen3 do (so converted layers match their teacher)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class HypeNetRotaryEmbedding(nn.Module):
    """The teacher's rotary settings (`config.rope_parameters`), evaluated at explicit per-token positions."""

    def __init__(self, config: HypeNetConfig):
        super().__init__()
        self.config = config
        self.rope_type = config.rope_parameters.get("rope_type", "default")
        self.rope_init = (
            self.compute_default_rope_parameters if self.rope_type == "default" else ROPE_INIT_FUNCTIONS[self.rope_type]
        )
        inv_freq, self.attention_scaling = self.rope_init(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    def _apply(self, fn, recurse=True):
        # Frequencies stay fp32 whatever the model is cast to: bf16 ones are wrong at long positions.
        super()._apply(fn, recurse)
        inv_freq = self.rope_init(self.config)[0].to(self.inv_freq.device)
        self.inv_freq, self.original_inv_freq = inv_freq, inv_freq.clone()
        return self

    @staticmethod
    def compute_default_rope_parameters(config: HypeNetConfig, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim
        inv_freq = 1.0 / (
            base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim)
        )
        return inv_freq, 1.0

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, head_dim]
        return (emb.cos() * self.attention_scaling).to(dtype), (emb.sin() * self.attention_scaling).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, T, H, d]; cos/sin: [B, T, d]."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return x * cos + rotate_half(x) * sin


@dataclass
class MixerContext:
    """Per-forward inputs shared by all mixers, computed once from the attention mask, the cache and positions.

    positions: [B, T] true 0-based token positions (left padding and the cache are accounted for).
    cos, sin: RoPE tables at `positions`.
    token_valid: [B, T] bool, False at padded positions; None when nothing is padded.
    attn_mask: [B, 1, T, past+T] bool for SDPA (True = attend), a lower-right causal bias (a cache and no padding), or
        None with `is_causal` telling SDPA what to do.
    key_start: with left padding and T > 1: per row, the index of its first real token among past + T; softmax
        attention then runs row by row on the unpadded keys instead of through a [B, 1, T, past+T] mask (64 GiB for
        4 rows at 128K tokens).
    logit_scale: [B, T] HyPE query scale ln(t + a) / ln(a), or None when scaling is off.
    attention_weights: with output_attentions, the list each attention layer appends its probabilities to (eager
        attention's weights, [B, H, T, past + T] in the model's dtype).
    """

    positions: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    token_valid: torch.Tensor | None
    attn_mask: torch.Tensor | None
    is_causal: bool
    logit_scale: torch.Tensor | None
    key_start: list[int] | None = None
    attention_weights: list | None = None


def build_mixer_context(
    config: HypeNetConfig,
    rotary: HypeNetRotaryEmbedding,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past_length: int = 0,
) -> MixerContext:
    """Positions, masks and scales for a chunk of T new tokens following `past_length` cached ones.

    `attention_mask` is the usual 2D padding mask over past + new tokens (1 = token, 0 = padding).
    """
    batch, seq_len = hidden_states.shape[:2]
    device = hidden_states.device
    total = past_length + seq_len
    key_valid = None
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(
                f"HypeNet takes a 2D padding attention_mask of shape [batch, past + new tokens]; got shape "
                f"{tuple(attention_mask.shape)}. Pass the tokenizer's attention_mask as is."
            )
        if attention_mask.shape[-1] != total:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} tokens but the cache holds {past_length} and "
                f"{seq_len} are new: expected attention_mask.shape[-1] == {total}."
            )
        key_valid = attention_mask.to(device=device, dtype=torch.bool)
        # The shortcuts below read the mask's values, which torch.compile cannot branch on (fullgraph=True fails, and
        # otherwise the graph breaks): compiled, a mask always takes the general path, which gives the same result.
        if not torch.compiler.is_compiling() and bool(key_valid.all()):
            key_valid = None

    if position_ids is None:
        if key_valid is not None:
            position_ids = (key_valid.long().cumsum(-1) - 1).clamp(min=0)[:, -seq_len:]
        else:
            position_ids = torch.arange(past_length, total, device=device).unsqueeze(0).expand(batch, -1)
    position_ids = position_ids.to(device).expand(batch, -1)

    attn_mask, is_causal, key_start = None, False, None
    left_padded = (key_valid is not None and seq_len > 1 and not torch.compiler.is_compiling()
                   and not bool((key_valid[:, :-1] & ~key_valid[:, 1:]).any()))
    if left_padded:
        key_start = (total - key_valid.sum(-1)).tolist()  # left padding: every row's real tokens are a suffix
    elif key_valid is not None:
        query_index = torch.arange(past_length, total, device=device)[:, None]
        key_index = torch.arange(total, device=device)[None, :]
        allowed = (key_index <= query_index)[None, None]  # [1, 1, T, total]
        # A padded query would see no key at all (NaN softmax): let every token always see itself.
        allowed = (allowed & key_valid[:, None, None, :]) | (key_index == query_index)[None, None]
        attn_mask = allowed.expand(batch, 1, seq_len, total)
    elif past_length > 0 and seq_len > 1:
        attn_mask = causal_lower_right(seq_len, total)
    elif seq_len > 1:
        is_causal = True

    cos, sin = rotary(position_ids, hidden_states.dtype)
    a = config.attention_logit_scaling_base
    logit_scale = None if a is None else torch.log(position_ids.float() + a) / math.log(a)
    token_valid = None if key_valid is None else key_valid[:, -seq_len:]
    return MixerContext(position_ids, cos, sin, token_valid, attn_mask, is_causal, logit_scale, key_start)


class HypeNetMLP(nn.Module):
    def __init__(self, config: HypeNetConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def _repeat_kv_for_sdpa(q: torch.Tensor) -> bool:
    """Whether grouped K/V heads are repeated before SDPA instead of passing enable_gqa: on CUDA in fp32, where no
    flash kernel runs and the memory-efficient one has no GQA, so SDPA would fall back to the math path, which
    materialises T x T scores (144 GiB at 64K tokens)."""
    return q.is_cuda and q.dtype == torch.float32


def _attention_by_row(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_start: list[int], scale: float,
                      gqa: bool) -> torch.Tensor:
    """Causal SDPA over left-padded rows, one row at a time on its real keys: q [B, H, T, D] holds the last T of the
    past + T positions of k, v [B, Hkv, past + T, D]; row b's real tokens start at key_start[b]. A padded query sees
    only itself (its own value), as in the masked path."""
    batch, heads, seq_len, _ = q.shape
    total = k.shape[2]
    past = total - seq_len
    o = torch.empty_like(q)
    for b, start in enumerate(key_start):
        first = min(max(start - past, 0), seq_len)  # the first real query
        if first:
            o[b, :, :first] = v[b, :, past:past + first].repeat_interleave(heads // v.shape[1], dim=0)
        if first == seq_len:
            continue
        kb, vb = k[b:b + 1, :, start:], v[b:b + 1, :, start:]
        queries, keys = seq_len - first, total - start
        mask = None if queries == keys or queries == 1 else causal_lower_right(queries, keys)
        o[b:b + 1, :, first:] = F.scaled_dot_product_attention(
            q[b:b + 1, :, first:], kb, vb, attn_mask=mask, is_causal=queries == keys and queries > 1, scale=scale,
            enable_gqa=gqa)
    return o


def allowed_keys(ctx: MixerContext, seq_len: int, total: int, device: torch.device) -> torch.Tensor | None:
    """[B or 1, 1, T, past + T] bool, True where a query sees a key: causality, padding and every query seeing at
    least itself, as the sdpa path applies them (`attn_mask`, `is_causal`, the lower-right bias or `key_start`); None
    where every query sees every key (one new token, no padding)."""
    if isinstance(ctx.attn_mask, torch.Tensor) and ctx.attn_mask.dtype == torch.bool:
        return ctx.attn_mask  # padding and causality, every query seeing at least itself
    if seq_len == 1 and ctx.key_start is None:
        return None
    query_index = torch.arange(total - seq_len, total, device=device)[:, None]
    key_index = torch.arange(total, device=device)[None, :]
    allowed = (key_index <= query_index)[None, None]
    if ctx.key_start is not None:  # left padding: keys before the row's first real token are hidden
        start = torch.tensor(ctx.key_start, device=device)[:, None, None, None]
        allowed = (allowed & (key_index >= start)) | (key_index == query_index)
    return allowed


def eager_attention_mask(ctx: MixerContext, seq_len: int, total: int, q: torch.Tensor) -> torch.Tensor | None:
    """`allowed_keys` as the additive mask transformers' eager attention takes (as its own masks for eager are): 0
    where a query sees a key, the dtype's minimum elsewhere."""
    allowed = allowed_keys(ctx, seq_len, total, q.device)
    if allowed is None:
        return None
    return torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, torch.finfo(q.dtype).min)


ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


def attention_implementation(config: HypeNetConfig) -> str:
    """The softmax attention layers' implementation, `config._attn_implementation` as transformers names it: "sdpa"
    (the default, also for None: a layer built outside a model) or "eager" (matmul + softmax, transformers' own
    `eager_attention_forward`, which returns the probabilities). Anything else is refused."""
    implementation = getattr(config, "_attn_implementation", None) or "sdpa"
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(unsupported_attention_message(implementation))
    return implementation


def unsupported_attention_message(implementation: str) -> str:
    return (
        f"HypeNet does not support attn_implementation={implementation!r}: its softmax attention layers run "
        "attn_implementation='sdpa' (the default; torch's scaled_dot_product_attention) or 'eager' (matmul + "
        "softmax, which output_attentions=True needs); its lightning layers have their own kernels. Load the model "
        "with one of those, or call model.set_attn_implementation('sdpa')."
    )


class HypeNetAttention(nn.Module):
    """The teacher's GQA softmax attention; HypeNet drops RoPE, adds an output gate and HyPE logit scaling.

    The softmax itself runs as `config._attn_implementation` says: "sdpa" (torch's scaled_dot_product_attention,
    row by row under left padding) or "eager" (transformers' eager_attention_forward on the same masks), between the
    same projections, norms, scaling and gate. output_attentions needs eager: under sdpa that call runs it.
    """

    def __init__(self, config: HypeNetConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim
        )
        self.num_key_value_groups = self.num_heads // self.num_kv_heads  # read by transformers' eager attention
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=config.attention_out_bias)
        if config.attention_qk_norm:
            self.q_norm = HypeNetRMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = HypeNetRMSNorm(self.head_dim, config.rms_norm_eps)
        if config.attention_output_gate:
            self.g_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)

    def forward(self, x: torch.Tensor, ctx: MixerContext, cache: Cache | None = None) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        q = self.q_proj(x).view(batch, seq_len, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(batch, seq_len, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(batch, seq_len, self.num_kv_heads, self.head_dim)
        if self.config.attention_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.config.attention_rope:
            q, k = apply_rope(q, ctx.cos, ctx.sin), apply_rope(k, ctx.cos, ctx.sin)
        if ctx.logit_scale is not None:  # HyPE: q_t *= ln(t + a) / ln(a), after the norm so it survives
            q = q * ctx.logit_scale[:, :, None, None].to(q.dtype)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        scale = self.head_dim**-0.5
        eager = attention_implementation(self.config) == "eager"
        if not eager and ctx.attention_weights is not None:
            logger.warning_once(
                "HypeNet: attn_implementation='sdpa' cannot return attention weights, so with output_attentions=True "
                "the attention layers run the eager path (matmul + softmax) instead. Load the model with "
                "attn_implementation='eager' to choose it and silence this warning."
            )
            eager = True
        if eager:
            mask = eager_attention_mask(ctx, seq_len, k.shape[2], q)
            o, weights = eager_attention_forward(self, q, k, v, mask, scaling=scale)  # o: [B, T, H, d]
            if ctx.attention_weights is not None:
                ctx.attention_weights.append(weights)
            return self._output(o.reshape(batch, seq_len, self.num_heads * self.head_dim), x)
        gqa = self.num_kv_heads != self.num_heads
        if gqa and _repeat_kv_for_sdpa(q):
            k = k.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
            v = v.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
            gqa = False
        if ctx.key_start is not None:
            o = _attention_by_row(q, k, v, ctx.key_start, scale, gqa)
        else:
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=ctx.attn_mask, is_causal=ctx.is_causal, scale=scale, enable_gqa=gqa,
            )
        return self._output(o.transpose(1, 2).reshape(batch, seq_len, self.num_heads * self.head_dim), x)

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o [B, T, H * d] through the output gate and o_proj."""
        if self.config.attention_output_gate:
            o = o * torch.sigmoid(self.g_proj(x))
        return self.o_proj(o)


class HypeNetLightningAttention(nn.Module):
    """Lightning Attention with HypeNet's changes (SPEC 2.1), per head h and token t:

        q_t = RoPE(RMSNorm_q(x_t Wq)),  k_t = RoPE(RMSNorm_k(x_t Wk)),  v_t = x_t Wv
        S_t = gamma_h S_{t-1} + (k_t / sqrt(d))^T v_t,   gamma_h = exp(-2^(-8h/H))
        o_t = q_t S_t
        y_t = (RMSNorm_o(o_t over all heads) * sigmoid(x_t Wz)) Wo
    """

    def __init__(self, config: HypeNetConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        hidden, inner, bias = config.hidden_size, config.num_attention_heads * config.head_dim, config.attention_bias
        self.q_proj = nn.Linear(hidden, inner, bias=bias)
        self.k_proj = nn.Linear(hidden, inner, bias=bias)  # MHA: the teacher's K/V heads repeated per query group
        self.v_proj = nn.Linear(hidden, inner, bias=bias)
        self.o_proj = nn.Linear(inner, hidden, bias=config.attention_out_bias)
        if config.lightning_qk_norm:
            self.q_norm = HypeNetRMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = HypeNetRMSNorm(self.head_dim, config.rms_norm_eps)
        if config.lightning_output_norm:
            self.o_norm = HypeNetRMSNorm(inner, config.rms_norm_eps)
        if config.lightning_output_gate:
            self.g_proj = nn.Linear(hidden, inner, bias=False)
        self.register_buffer("log_decay", alibi_log_decay(self.num_heads), persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.log_decay = alibi_log_decay(self.num_heads).to(self.log_decay.device)  # fp32 whatever the model dtype
        return self

    def forward(self, x: torch.Tensor, ctx: MixerContext, cache: Cache | None = None) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        shape = (batch, seq_len, self.num_heads, self.head_dim)
        q, k, v = self.q_proj(x).view(shape), self.k_proj(x).view(shape), self.v_proj(x).view(shape)
        if self.config.lightning_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, ctx.cos, ctx.sin), apply_rope(k, ctx.cos, ctx.sin)
        log_decay = self.log_decay.float()
        g = log_decay.expand(batch, seq_len, self.num_heads)
        g_gamma = log_decay
        if ctx.token_valid is not None:  # padding neither writes to nor decays the state
            valid = ctx.token_valid[:, :, None]
            k, v = k.masked_fill(~valid[..., None], 0.0), v.masked_fill(~valid[..., None], 0.0)
            g, g_gamma = g * valid, None
        state = lightning_state(cache, self.layer_idx)
        run = partial(
            lightning_attention, scale=self.head_dim**-0.5, backend=self.config.lightning_backend,
            chunk_size=self.config.lightning_chunk_size, g_gamma=g_gamma,
        )
        layer = cache.layers[self.layer_idx] if cache is not None else None
        if getattr(layer, "record_past", False):
            if not isinstance(layer, HypeNetLightningLayer):
                raise ValueError(
                    "this cache records for a rollback (assisted decoding), but its lightning layers cannot roll "
                    "back a recurrent state: create it with HypeNetCache(model.config), or let generate() create it."
                )
            o, new_state = self._recorded(layer, run, q, k, v, g, state)
        else:
            o, new_state = run(q, k, v, g, initial_state=state, output_final_state=cache is not None)
        if cache is not None:
            cache.update_recurrent_state(new_state, self.layer_idx)
        o = o.reshape(batch, seq_len, self.num_heads * self.head_dim).to(x.dtype)
        if self.config.lightning_output_norm:
            o = self.o_norm(o)
        if self.config.lightning_output_gate:
            o = o * torch.sigmoid(self.g_proj(x))
        return self.o_proj(o)

    @staticmethod
    def _recorded(layer: HypeNetLightningLayer, run, q, k, v, g, state):
        """The forward while the cache records for a rollback (assisted decoding): the tokens before the rollback
        window run first, then the window's keys, values and decays are kept with the state before them."""
        split = q.shape[1] - layer.rollback_window(q.shape[1])
        outputs = []
        if split > 0:
            o, state = run(q[:, :split], k[:, :split], v[:, :split], g[:, :split], initial_state=state)
            outputs.append(o)
        layer.record(state, k[:, split:], v[:, split:], g[:, split:], restart=split > 0,
                     replay=partial(_replay_state, run))
        o, state = run(q[:, split:], k[:, split:], v[:, split:], g[:, split:], initial_state=state)
        return torch.cat(outputs + [o], dim=1), state


def _replay_state(run, state: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor):
    """The recurrent state after tokens (k, v, g) starting from `state` (None: zeros)."""
    return run(torch.zeros_like(k), k, v, g, initial_state=state, output_final_state=True)[1]


class HypeNetLightningLayer(LinearAttentionLayer):
    """A lightning layer's slot in the cache: its recurrent state, and while the cache records (assisted or
    speculative decoding, which verifies drafted tokens and then drops the rejected ones) what rolling the state back
    needs. A recurrent state cannot be un-written, so the layer keeps the state before the tokens seen since the last
    `crop` and their keys, values and decays (a few KB per token, not a [H, d, d] state per token), and `crop(-n)`
    replays all but the last n of them."""

    MIN_ROLLBACK = 1024  # tokens a rollback may reach back, at least (more if the generator drafts more)
    is_croppable = True  # (transformers 5.24 says no for any layer with a recurrent state)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.recurrent_states_to_keep = 0
        self._tail = None  # [state before, k, v, g, replay] since the last crop

    def activate_past_recording(self, recurrent_states_to_keep: int | None = None, **kwargs):
        self.record_past = True
        self.recurrent_states_to_keep = recurrent_states_to_keep or 0
        self._tail = None

    def rollback_window(self, new_tokens: int) -> int:
        """How many of `new_tokens` to keep for a rollback."""
        return min(new_tokens, self._longest_rollback())

    def _longest_rollback(self) -> int:
        return max(self.recurrent_states_to_keep + 1, self.MIN_ROLLBACK)

    def record(self, state, k, v, g, restart: bool, replay) -> None:
        """Keep tokens (k, v, g) that follow recurrent state `state`; `restart` drops the tokens kept before."""
        if self._tail is None or restart:
            self._tail = [None if state is None else state.clone(), k, v, g, replay]
        else:
            self._tail[1:4] = [torch.cat([old, new], dim=1) for old, new in zip(self._tail[1:4], (k, v, g))]
        excess = self._tail[1].shape[1] - self._longest_rollback()
        if excess > 0:  # fold the oldest tokens into the state before
            start, k, v, g, replay = self._tail
            self._tail = [replay(start, k[:, :excess], v[:, :excess], g[:, :excess]), k[:, excess:], v[:, excess:],
                          g[:, excess:], replay]

    def reset(self) -> None:
        super().reset()
        self._tail = None

    def update_recurrent_state(self, recurrent_states: torch.Tensor, state_idx: int = 0, **kwargs) -> torch.Tensor:
        if not self.is_recurrent_states_initialized[state_idx]:
            self.lazy_initialization(recurrent_states=recurrent_states, state_idx=state_idx)
        self.recurrent_states[state_idx].copy_(recurrent_states)
        return self.recurrent_states[state_idx]

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last `-tokens_to_remove` tokens (0: only drop what was kept for a rollback)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes minus the number of tokens to remove, got {tokens_to_remove}")
        remove = -tokens_to_remove
        if remove:
            kept = 0 if self._tail is None else self._tail[1].shape[1]
            if remove > kept:
                raise RuntimeError(
                    f"cannot roll a lightning layer's recurrent state back by {remove} tokens: "
                    + ("the cache is not recording; call cache.activate_past_recording() before the forward"
                       if not self.record_past else f"only the last {kept} tokens were kept")
                )
            start, k, v, g, replay = self._tail
            state = start if remove == kept else replay(start, k[:, :-remove], v[:, :-remove], g[:, :-remove])
            if state is None:
                self.recurrent_states[0].zero_()
            else:
                self.recurrent_states[0].copy_(state)
        self._tail = None


def lightning_state(cache: Cache | None, layer_idx: int) -> torch.Tensor | None:
    """The recurrent state [B, H, d, d] (fp32) a lightning layer left in the cache, or None before its first call."""
    if cache is None:
        return None
    layer = cache.layers[layer_idx] if layer_idx < len(cache.layers) else None
    if not hasattr(layer, "recurrent_states"):
        raise ValueError(
            f"cache layer {layer_idx} cannot hold a recurrent state ({type(layer).__name__}); create the cache with "
            "HypeNetCache(model.config) or DynamicCache(), or let the model create it."
        )
    return layer.recurrent_states[0] if layer.is_recurrent_states_initialized[0] else None


class HypeNetCache(DynamicCache):
    """KV cache for attention layers and recurrent state for lightning layers.

    Counts the tokens it has seen, so that a model without any attention layer still knows its position.
    """

    def __init__(self, config: HypeNetConfig, **kwargs):
        super().__init__(config=config, **kwargs)
        for i, mixer in enumerate(config.mixer_types):
            if mixer == "lightning":
                self.layers[i] = HypeNetLightningLayer()
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reset(self):
        super().reset()
        self.seen_tokens = 0

    def activate_past_recording(self, recurrent_states_to_keep: int | None = None, **kwargs) -> None:
        """Keep what rolling back the lightning states needs (the drafted tokens per step come from transformers
        >= 5.25; attention layers can always drop keys)."""
        for layer in self.layers:
            if isinstance(layer, HypeNetLightningLayer):
                layer.activate_past_recording(recurrent_states_to_keep)

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last `-tokens_to_remove` tokens: attention layers drop their keys and values, lightning
        layers replay their state (only while recording, see `HypeNetLightningLayer`)."""
        super().crop(tokens_to_remove)
        self.seen_tokens += min(tokens_to_remove, 0)


def own_cache(cache: Cache | None, config: HypeNetConfig, recurrent_states_to_keep: int | None = None):
    """The cache a HypeNet runs with: a HypeNetCache as is; an unused DynamicCache, which a user makes as for any
    transformers model (`DynamicCache()`, `DynamicCache(config=model.config)`) or generate() makes, turned into a
    HypeNetCache in place, so that the caller's object holds what the forward adds. A DynamicCache's own
    linear-attention layers would take the states, but it counts the tokens seen by its first layer's keys: with a
    lightning first layer it says 0 after any prefill, and the next tokens would get the wrong positions."""
    if cache is None or isinstance(cache, HypeNetCache):  # (hypenet's own HypeNetCache given to a trust_remote_code
        return cache                                       # checkpoint's copy of the class is adopted as below)
    if not isinstance(cache, DynamicCache):
        raise ValueError(
            f"HypeNet keeps its lightning layers' recurrent states in its own cache, which {type(cache).__name__} "
            "cannot be: pass DynamicCache() or HypeNetCache(model.config), or let the model create it."
        )
    if any(getattr(layer, "is_initialized", False) or any(getattr(layer, "is_recurrent_states_initialized", ()))
           for layer in cache.layers):
        raise ValueError(
            "this DynamicCache already holds tokens of another model (a HypeNet turns an unused DynamicCache into "
            "its own cache at its first use): pass a new DynamicCache() or HypeNetCache(model.config)."
        )
    recording = any(getattr(layer, "record_past", False) for layer in cache.layers)  # an assistant's cache
    fresh = HypeNetCache(config, offloading=getattr(cache, "offloading", False))
    cache.__class__ = HypeNetCache  # the caller's object: generate() and the caller's next forward read it
    cache.__dict__.clear()
    cache.__dict__.update(fresh.__dict__)
    if recording:
        cache.activate_past_recording(recurrent_states_to_keep=recurrent_states_to_keep)
    return cache


MIXER_CLASSES = {"attention": HypeNetAttention, "lightning": HypeNetLightningAttention}


class HypeNetDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: HypeNetConfig, layer_idx: int):
        super().__init__()
        self.mixer_type = config.mixer_types[layer_idx]
        mixer = MIXER_CLASSES[self.mixer_type](config, layer_idx)
        # Teacher names: attention stays `self_attn`; an RNN mixer is `linear_attn`, as in transformers' hybrids.
        if self.mixer_type == "attention":
            self.self_attn = mixer
        else:
            self.linear_attn = mixer
        self.mlp = HypeNetMLP(config)
        self.input_layernorm = HypeNetRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = HypeNetRMSNorm(config.hidden_size, config.rms_norm_eps)

    @property
    def mixer(self) -> nn.Module:
        return self.self_attn if self.mixer_type == "attention" else self.linear_attn

    def forward(self, hidden_states: torch.Tensor, ctx: MixerContext, cache: Cache | None = None) -> torch.Tensor:
        hidden_states = hidden_states + self.mixer(self.input_layernorm(hidden_states), ctx, cache)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class HypeNetPreTrainedModel(PreTrainedModel):
    config_class = HypeNetConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HypeNetDecoderLayer"]
    _supports_sdpa = True
    # transformers <= 5.24 refuses assisted generation for stateful models; HypeNetCache rolls its states back.
    _is_stateful = False

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """set_attn_implementation works: the attention layers read config._attn_implementation at every call
        (transformers guesses this from the source text, looking for its AttentionInterface)."""
        return True

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """`attn_implementation` "sdpa" (the default) or "eager", through transformers' checks; anything else is
        refused with what HypeNet runs (transformers would accept any registered attention function, e.g.
        "paged|eager", and list it as possible)."""
        if requested_attention is not None and requested_attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(unsupported_attention_message(requested_attention))
        return super().get_correct_attn_implementation(requested_attention, is_init_check)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, HypeNetLightningAttention):
            init.copy_(module.log_decay, alibi_log_decay(module.num_heads))


class HypeNetModel(HypeNetPreTrainedModel):
    def __init__(self, config: HypeNetConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(HypeNetDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = HypeNetRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = HypeNetRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: Cache | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and cache is None:
            cache = HypeNetCache(self.config)
        if not use_cache:
            cache = None
        cache = own_cache(cache, self.config)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        hidden_states = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        past_length = cache.get_seq_length() if cache is not None else 0
        ctx = build_mixer_context(
            self.config, self.rotary_emb, hidden_states, attention_mask, position_ids, past_length
        )
        all_hidden_states = [] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        for layer in self.layers:
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            ctx.attention_weights = [] if all_attentions is not None and layer.mixer_type == "attention" else None
            hidden_states = layer(hidden_states, ctx, cache)
            if all_attentions is not None:  # a lightning layer has no attention weights: None in its place
                all_attentions.append(ctx.attention_weights[-1] if ctx.attention_weights else None)
        hidden_states = self.norm(hidden_states)
        if all_hidden_states is not None:
            all_hidden_states.append(hidden_states)
        if isinstance(cache, HypeNetCache):
            cache.seen_tokens += hidden_states.shape[1]
        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            cache=cache,
            hidden_states=tuple(all_hidden_states) if all_hidden_states is not None else None,
            attentions=tuple(all_attentions) if all_attentions is not None else None,
        )
        return output if (self.config.return_dict if return_dict is None else return_dict) else output.to_tuple()


class HypeNetForCausalLM(HypeNetPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HypeNetConfig):
        super().__init__(config)
        self.model = HypeNetModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_hidden_states=output_hidden_states,
            past_key_values=past_key_values, output_attentions=output_attentions, return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        output = CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if (self.config.return_dict if return_dict is None else return_dict) else output.to_tuple()

    def init_continuous_batching(self, *args, **kwargs):
        """Every continuous-batching entry point (generate_batch, the context manager) starts here."""
        raise NotImplementedError(
            "continuous batching (generate_batch) keeps keys and values in a paged cache, which has no place for the "
            "lightning layers' recurrent states. Use generate() on a left-padded batch (exact: padding never enters "
            "a state), or hypenet's fast engine (`hypenet generate`, hypenet.fast.FastHypeNet)."
        )

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """generate() builds a plain DynamicCache; give it our hybrid cache instead (same layers, plus a token
        count and lightning layers that can roll back for assisted decoding)."""
        implementation = generation_config.cache_implementation
        if implementation not in (None, "dynamic") and generation_config.use_cache is not False:
            raise ValueError(
                f"HypeNet generates with its own hybrid cache (HypeNetCache: keys and values for attention layers, a "
                f"recurrent state for lightning layers); cache_implementation={implementation!r} is not supported. "
                "Leave cache_implementation unset (or 'dynamic'); for a static cache with CUDA graphs use hypenet's "
                "fast engine (`hypenet generate`, hypenet.fast.FastHypeNet)."
            )
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        for key in ("cache", "past_key_values"):  # the caller's cache, or the one generate() built
            if model_kwargs.get(key) is not None:
                model_kwargs[key] = own_cache(model_kwargs[key], self.config, generation_config.num_assistant_tokens)


__all__ = [
    "HypeNetCache",
    "HypeNetForCausalLM",
    "HypeNetModel",
    "HypeNetPreTrainedModel",
    "HypeNetAttention",
    "HypeNetLightningAttention",
    "build_mixer_context",
]
