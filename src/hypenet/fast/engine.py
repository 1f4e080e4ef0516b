"""Fast HypeNet inference (gpt-fast style): static hybrid cache, chunked prefill, compiled graph-captured decode step.

A few ideas, each aimed at where the time goes at long context:
- **Static cache.** Every attention layer owns K/V buffers [B, Hkv, max_len, d] and every lightning layer an fp32
  state [B, H, d, d], allocated once. Decode writes one slot in place, so the step has fixed shapes and addresses.
- **Decode reads only what it must.** Attention runs the split-KV kernel of `attention.py` over the valid slots
  (the whole GPU works on one long row); the lightning step is one kernel of `recurrent.py` that reads each
  state once and writes it back in place. Per step the GPU reads the weights, the filled KV cache and the states.
- **Few launches per step, one replay.** Each layer's input projections (q/k/v/gate) and its MLP's gate/up are
  repacked into one weight each (few large matrix-vector products instead of many small ones); torch.compile fuses
  the norms, RoPE and gates around them; the whole step is captured in one CUDA graph. At batch 1 the products can
  go through the Triton matrix-vector kernel of `gemv.py` instead of cuBLAS (the default on CUDA: faster than
  cuBLAS at every HypeNet-2B shape on the H200; its launch settings are tuned on the model's own weights when the
  engine is built), and the RMSNorm before a projection, SiLU(gate) * up and the residual add run inside it
  (gemv_fusion).
  Compilation is regional: one layer function, compiled once per mixer type and reused by every layer.
- **Chunked prefill.** The prompt goes through in chunks of `prefill_chunk` tokens: attention over the cached
  prefix and the chunk itself (on CUDA in bf16, cuDNN's kernels on the two blocks apart, merged by log-sum-exp;
  else one bottom-right-causal SDPA call), lightning layers through `lightning_attention` with the state
  carried from chunk to chunk. Activation memory is bounded by the chunk, not the prompt, and only the last
  position's logits are computed.
- **Exact left padding.** A padded batch is prefilled row by row on each row's own tokens, placed so that every row
  ends at the same slot; row b's keys start at slot start[b]. Padding never enters a lightning state or an
  attention softmax, and positions count real tokens only, as in the reference model.

The engine drives the model's own modules and parameters (no copy of the weights); the mixers' equations are
written out once more here for a cache that is written in place: `HypeNetForCausalLM.forward` is their reference,
and tests/test_fast_engine.py compares the two.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from ..model.lightning import lightning_attention, lightning_attention_recurrent
from ..model.modeling_hypenet import apply_rope, build_mixer_context
from .attention import decode_attention, prefill_attention, programmatic_launch_usable, triton_available
from .gemv import FUSION_PARTS, fusion_parts, is_tuned, loop_variant, project, tune
from .options import DEFAULT_PREFILL_CHUNK
from .recurrent import lightning_step

# Inductor options of the compiled decode step. emulate_precision_casts: round every bf16/fp16 intermediate to its
# dtype as eager PyTorch does (and the prefill and HypeNetForCausalLM.forward do), instead of keeping the values
# that a fused kernel passes between ops (RMSNorm, RoPE, gates, residuals) in fp32. Without it the compiled step
# rounds in other places than the reference, and bf16's rounding chains turn that into a logit difference of the
# size of bf16's own error (decode rel. err 1.35e-2 vs 7.0e-3 eager, CPU, hypenet.fast.check's model). The extra
# conversions are register-only instructions inside the fused kernels: no memory traffic, no extra launches.
# Inductor's C++ code (the CPU) honours the option only in recent torch: 2.13 does, 2.11 did not
# (results/gpu_tests/h100_2026-12-06; pytorch/pytorch#136896), and there the compiled step drifts as without it.
_COMPILE_OPTIONS = {"emulate_precision_casts": True}

# Inductor options of the compiled decode step with pdl: Inductor's own kernels launched with programmatic dependent
# launch too, so that every kernel of the step may start while the one before it ends.
_PDL_COMPILE_OPTIONS = {"triton.enable_pdl": True}

# compile_options for FastHypeNet: Inductor picks each matmul's kernel by timing (cuBLAS or its own Triton templates,
# which can take the neighbouring elementwise work in) and tunes its kernels' launch settings.
MAX_AUTOTUNE = {"max_autotune": True, "coordinate_descent_tuning": True}

# A mixer's projections of its input, in this order; `g_proj` (the output gate) exists only when the config has it.
_INPUT_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "g_proj")


@dataclass
class LayerBuffers:
    """What one layer reads and writes besides its module: its cache and its repacked weights.

    keys, values: [B, Hkv, max_len, d] (attention layers); state: [B, H, d, d] fp32 (lightning layers);
    input_weight: q/k/v(/gate) weights stacked; mlp_weight: gate/up weights stacked (None: use the modules).
    """

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    state: torch.Tensor | None = None
    input_weight: torch.Tensor | None = None
    mlp_weight: torch.Tensor | None = None
    mlp_silu: bool = False  # the MLP's activation is SiLU: with mlp_weight, SiLU(gate) * up is one projection


@dataclass
class StaticHybridCache:
    """Preallocated per-layer caches (LayerBuffers.keys/values/state) and the first slot of each row.

    start[b] is the first slot row b uses (its left padding); every row's newest token is at the same slot.
    """

    layers: list[LayerBuffers]
    start: torch.Tensor

    @classmethod
    def allocate(cls, config, batch: int, max_len: int, dtype: torch.dtype, device) -> StaticHybridCache:
        kv_shape = (batch, config.num_key_value_heads, max_len, config.head_dim)
        state_shape = (batch, config.num_attention_heads, config.head_dim, config.head_dim)
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        # Zero-filled: slots a row never writes are still read by rows beyond a batch smaller than max_batch.
        layers = [
            LayerBuffers(keys=torch.zeros(kv_shape, dtype=dtype, device=device),
                         values=torch.zeros(kv_shape, dtype=dtype, device=device))
            if mixer == "attention" else LayerBuffers(state=torch.zeros(state_shape, dtype=state_dtype, device=device))
            for mixer in config.mixer_types
        ]
        return cls(layers, torch.zeros(batch, dtype=torch.long, device=device))

    def reset(self) -> None:
        """Forget every sequence (in place: a captured decode graph keeps pointing at these buffers)."""
        for layer in self.layers:
            if layer.state is not None:
                layer.state.zero_()
        self.start.zero_()

    @property
    def nbytes(self) -> int:
        tensors = [t for layer in self.layers for t in (layer.keys, layer.values, layer.state) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class Chunk:
    """Where a forward pass of T tokens per row reads and writes the cache.

    Prefill (slot is None): rows `rows` get the tokens at slots [hi - T, hi) and attend to slots [lo, hi).
    Decode (slot is a [1] tensor): every row writes slot `slot` and attends to slots [start[b], slot + 1).
    """

    rows: slice | None = None  # prefill only
    lo: int = 0
    hi: int = 0
    split: bool | None = None  # prefill: fast.attention.prefill_attention's split (None: its default)
    slot: torch.Tensor | None = None
    fused_step: bool = True  # decode: the lightning step as the `lightning_step` op (False: the recurrence inline)
    gemv: bool = False  # decode: projections through the `gemv` op (the Triton kernel on CUDA at batch 1)
    gemv_fusion: tuple[str, ...] = ()  # with gemv: the parts (fast.gemv.FUSION_PARTS) run inside the `gemv` calls
    pdl: bool = False  # decode: this package's kernels launched with programmatic dependent launch


# ---------------------------------------------------------------------- the model, written for a static cache


def hybrid_layer(layer: nn.Module, x: torch.Tensor, ctx, buffers: LayerBuffers, chunk: Chunk,
                 start: torch.Tensor) -> torch.Tensor:
    """One decoder layer (h = x + Mixer(norm(x)); out = h + MLP(norm(h))) over T tokens per row, cache in place.
    Each sublayer returns the residual stream with its output added: with chunk.gemv and chunk.gemv_fusion the norm
    before a projection and the residual add after one can run inside its matrix-vector kernel."""
    if layer.mixer_type == "attention":
        x = _attention(layer.self_attn, x, layer.input_layernorm, ctx, buffers, chunk, start)
    else:
        x = _lightning(layer.linear_attn, x, layer.input_layernorm, ctx, buffers, chunk)
    return _mlp(layer.mlp, x, layer.post_attention_layernorm, buffers.mlp_weight, buffers.mlp_silu, chunk)


def _input_projections(mixer: nn.Module, x: torch.Tensor, norm: nn.Module, fused: torch.Tensor | None,
                       chunk: Chunk) -> list[torch.Tensor]:
    """norm(x) Wq, norm(x) Wk, norm(x) Wv and, when the mixer has an output gate, norm(x) Wg (before its sigmoid)."""
    names = [n for n in _INPUT_PROJECTIONS if hasattr(mixer, n)]
    if fused is None:
        h = norm(x)
        return [project(h, getattr(mixer, n), chunk.gemv, pdl=chunk.pdl) for n in names]
    sizes = [getattr(mixer, n).out_features for n in names]
    return list(project(x, fused, chunk.gemv, norm=norm, fuse=chunk.gemv_fusion, pdl=chunk.pdl).split(sizes, dim=-1))


def _mlp(mlp: nn.Module, x: torch.Tensor, norm: nn.Module, fused: torch.Tensor | None, silu: bool,
         chunk: Chunk) -> torch.Tensor:
    """x + MLP(norm(x)); with the gate/up weights stacked and a SiLU MLP (`silu`), norm, gate/up and SiLU(gate) * up
    are one projection."""
    use_gemv, fuse, pdl = chunk.gemv, chunk.gemv_fusion, chunk.pdl
    if fused is not None and silu:
        hidden = project(x, fused, use_gemv, norm=norm, swiglu=True, fuse=fuse, pdl=pdl)
    else:
        h = norm(x)
        if fused is None:
            gate, up = project(h, mlp.gate_proj, use_gemv, pdl=pdl), project(h, mlp.up_proj, use_gemv, pdl=pdl)
        else:
            gate, up = project(h, fused, use_gemv, pdl=pdl).chunk(2, dim=-1)
        hidden = mlp.act_fn(gate) * up
    return project(hidden, mlp.down_proj, use_gemv, residual=x, fuse=fuse, pdl=pdl)


def _attention(attn: nn.Module, x: torch.Tensor, norm: nn.Module, ctx, buffers: LayerBuffers, chunk: Chunk,
               start: torch.Tensor) -> torch.Tensor:
    """x + Attention(norm(x))."""
    cfg = attn.config
    batch, seq_len, _ = x.shape
    heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q, k, v, *gate = _input_projections(attn, x, norm, buffers.input_weight, chunk)
    q = q.view(batch, seq_len, heads, head_dim)
    k = k.view(batch, seq_len, kv_heads, head_dim)
    v = v.view(batch, seq_len, kv_heads, head_dim)
    if cfg.attention_qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if cfg.attention_rope:
        q, k = apply_rope(q, ctx.cos, ctx.sin), apply_rope(k, ctx.cos, ctx.sin)
    if ctx.logit_scale is not None:  # HyPE
        q = q * ctx.logit_scale[:, :, None, None].to(q.dtype)
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    keys, values = buffers.keys, buffers.values
    if chunk.slot is not None:
        keys.index_copy_(2, chunk.slot, k)
        values.index_copy_(2, chunk.slot, v)
        end = (chunk.slot + 1).repeat(batch)  # every row's newest token is at `slot`
        o = decode_attention(q[:, 0], keys, values, start, end, head_dim**-0.5, chunk.pdl)[:, None]
    else:
        keys[chunk.rows, :, chunk.hi - seq_len:chunk.hi] = k
        values[chunk.rows, :, chunk.hi - seq_len:chunk.hi] = v
        o = prefill_attention(q.transpose(1, 2), keys[chunk.rows, :, chunk.lo:chunk.hi],
                              values[chunk.rows, :, chunk.lo:chunk.hi], head_dim**-0.5, chunk.split).transpose(1, 2)
    o = o.reshape(batch, seq_len, heads * head_dim)
    if gate:
        o = o * torch.sigmoid(gate[0])
    return project(o, attn.o_proj, chunk.gemv, residual=x, fuse=chunk.gemv_fusion, pdl=chunk.pdl)


def _lightning(lin: nn.Module, x: torch.Tensor, norm: nn.Module, ctx, buffers: LayerBuffers,
               chunk: Chunk) -> torch.Tensor:
    """x + LightningAttention(norm(x))."""
    cfg = lin.config
    batch, seq_len, _ = x.shape
    heads, head_dim = cfg.num_attention_heads, cfg.head_dim
    shape = (batch, seq_len, heads, head_dim)
    q, k, v, *gate = _input_projections(lin, x, norm, buffers.input_weight, chunk)
    q, k, v = q.view(shape), k.view(shape), v.view(shape)
    if cfg.lightning_qk_norm:
        q, k = lin.q_norm(q), lin.k_norm(k)
    q, k = apply_rope(q, ctx.cos, ctx.sin), apply_rope(k, ctx.cos, ctx.sin)
    log_decay = lin.log_decay.float()
    if chunk.slot is not None and chunk.fused_step:  # one kernel, the state updated in its buffer
        o = lightning_step(q[:, 0], k[:, 0], v[:, 0], log_decay, buffers.state, head_dim**-0.5, chunk.pdl)[:, None]
    else:
        g = log_decay.expand(batch, seq_len, heads)
        if chunk.slot is not None:
            state = buffers.state
            o, new_state = lightning_attention_recurrent(q, k, v, g, head_dim**-0.5, initial_state=state)
        else:
            state = buffers.state[chunk.rows]
            o, new_state = lightning_attention(
                q, k, v, g, head_dim**-0.5, initial_state=state, output_final_state=True,
                backend=cfg.lightning_backend, chunk_size=cfg.lightning_chunk_size, g_gamma=log_decay,
            )
        state.copy_(new_state)
    o = o.reshape(batch, seq_len, heads * head_dim).to(x.dtype)
    if cfg.lightning_output_norm:
        o = lin.o_norm(o)
    if gate:
        o = o * torch.sigmoid(gate[0])
    return project(o, lin.o_proj, chunk.gemv, residual=x, fuse=chunk.gemv_fusion, pdl=chunk.pdl)


def _embed(body: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor):
    """Token embeddings and the per-token context (RoPE tables, HyPE query scale) at explicit positions."""
    x = body.embed_tokens(input_ids)
    # positions are explicit, so this builds no attention mask
    return x, build_mixer_context(body.config, body.rotary_emb, x, position_ids=positions)


def _last_logits(model: nn.Module, x: torch.Tensor, use_gemv: bool = False, fuse: tuple[str, ...] = (),
                 pdl: bool = False) -> torch.Tensor:
    return project(x[:, -1], model.lm_head, use_gemv, norm=model.model.norm, fuse=fuse, pdl=pdl).float()


# ---------------------------------------------------------------------- weight repacking

# First linear of a repacked group -> (fused weight, the data pointers its linears had then): a second engine on
# the same model reuses the packing instead of packing (and holding) the weights again.
_REPACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def _repack(linears: list[nn.Linear]) -> torch.Tensor | None:
    """Concatenate the weights of linears that read the same input into one tensor, and make each linear's weight a
    view into it (same values, no extra memory). None (nothing changed) when a linear has a bias."""
    if any(linear.bias is not None for linear in linears):
        return None
    pointers = tuple(linear.weight.data_ptr() for linear in linears)
    known = _REPACKED.get(linears[0])
    if known is not None and known[1] == pointers:
        return known[0]
    fused = torch.cat([linear.weight for linear in linears])
    offset = 0
    for linear in linears:
        rows = linear.weight.shape[0]
        linear.weight = nn.Parameter(fused[offset:offset + rows], requires_grad=linear.weight.requires_grad)
        offset += rows
    _REPACKED[linears[0]] = (fused, tuple(linear.weight.data_ptr() for linear in linears))
    return fused


# ---------------------------------------------------------------------- the engine


class FastHypeNet:
    """Static-cache inference engine for a HypeNetForCausalLM (any mix of attention and lightning layers).

        engine = FastHypeNet(model, max_batch=1, max_len=131072 + 256)
        tokens = engine.generate(input_ids, max_new_tokens=256)

    max_batch, max_len: the cache's size (prompt + generated tokens per row); batches up to max_batch rows run.
    prefill_chunk: tokens per prefill chunk. The attribute `prefill_split` (None: `fast.attention.prefill_attention`'s
        choice, cuDNN's split on CUDA in bf16/fp16; False: one bottom-right-causal SDPA call per chunk, slower at long
        context, closer to `model.forward`'s own attention) can be set at any time.
    compile / cuda_graph: torch.compile the decode step / capture it in a CUDA graph (default: on for CUDA models).
    fuse_projections: repack each layer's q/k/v(/gate) weights and its MLP's gate/up weights into one tensor each,
        in place: the modules keep views into it, so the model computes exactly what it did and no memory is added,
        but its parameters then share storage (save the model before building an engine, not after).
    fused_lightning_step: decode each lightning layer's recurrence as one op that updates the state in its buffer
        (`fast.recurrent.lightning_step`: one Triton kernel on CUDA); False: the reference recurrence, compiled
        with the rest of the layer (several kernels and a copy of the state).
    gemv: "auto" (default: "triton" for max_batch 1 on CUDA with triton installed, else "cublas"), "cublas"
        (F.linear) or "triton": with max_batch 1, the decode step's projections through `fast.gemv`'s Triton
        matrix-vector kernel (on CUDA; elsewhere its reference, F.linear), its launch settings tuned per weight shape
        on the model's weights first (`fast.gemv.tune`, a few seconds). On the H200 it beat cuBLAS at every
        HypeNet-2B decode shape, 1.03-1.44x (results/fast_bench/gemv/). If none of its launch settings runs for a
        weight shape, "auto" falls back to cuBLAS with a warning and "triton" raises.
    gemv_fusion: with the Triton matrix-vector kernel, the work around the projections run inside it
        (`gemv_fused_kernel`): some of "norm" (the RMSNorm before each projection), "swiglu" (SiLU(gate) * up after
        the stacked gate/up) and "residual" (the residual adds), as a list or a comma list; True for all of them,
        False or "none" for none (that work then stays with Inductor, as with cuBLAS). Default: all three
        (`fast.gemv.FUSION_PARTS`). On the H200, with PDL, the HypeNet-2B step took 2.19 / 4.67 / 7.96 ms at 128K /
        512K / 1M (1.23x / 1.06x / 1.00x the floor; results/fast_bench/main_fused/) against 2.30 / 4.78 / 8.06 ms
        with only the residual adds inside (results/fast_bench/pdl/long_context/). Its bf16 logits are 1.50e-2 from
        model.forward's (with only the residual inside: 1.23e-2), yet nearer the same weights computed in fp32
        (1.53e-2) than model.forward's own bf16 logits are (1.56e-2; with only the residual inside: 1.58e-2): the
        norm inside the kernel rounds differently from model.forward, not worse
        (results/fast_bench/check_fp32_distance/). "residual" stays closest to model.forward's rounding.
    pdl: launch every kernel of the decode step with programmatic dependent launch (CUDA, compute capability 9.0+):
        this package's kernels (matrix-vector products, split-KV attention, lightning step) and, through Inductor's
        `triton.enable_pdl`, the compiled ones. Each may then start while the kernel before it ends: it sets up,
        reads what does not depend on that kernel (the matrix-vector kernel its first weight slice), and waits for
        that kernel's results before it reads them. This package's kernels compute the same bits as without (Inductor
        compiles and tunes its own kernels again: 3.4e-7 apart in fp32 on the H200). On the H200 it made the 128K
        step 2.29 ms against 2.44 with only the residual inside the matrix-vector kernel, and 2.17 ms (1.21x the
        floor) with gemv_fusion="norm,swiglu,residual" (results/fast_bench/pdl/); at batch 8 it took 2-4% off, at
        batch 32 nothing (results/fast_bench/pdl/long_context/). "auto" (default): on wherever the GPU can
        (`programmatic_launch_usable`), at any batch size: the H200's bf16 check found the logits the same bits with
        and without it at batch 1 and 2 (results/fast_bench/check_fp32_distance/). Off elsewhere; True on a GPU
        that cannot raises.
    compile_options: Inductor options added to the engine's own (`MAX_AUTOTUNE`: let Inductor time its Triton
        matmul templates against cuBLAS for each of the step's matrix-vector products and fuse their neighbours
        into them; compiling then takes minutes).
    Construction on CUDA compiles and captures the decode step (tens of seconds). The model's weights are used as
    they are: cast the model to the dtype you want first.
    """

    def __init__(
        self,
        model: nn.Module,
        max_batch: int = 1,
        max_len: int = 4096,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        compile: bool | None = None,
        cuda_graph: bool | None = None,
        fuse_projections: bool = True,
        fused_lightning_step: bool = True,
        compile_options: dict | None = None,
        gemv: str = "auto",
        gemv_fusion: bool | str | tuple[str, ...] = FUSION_PARTS,
        pdl: bool | str = "auto",
    ):
        config = model.config
        if getattr(config, "model_type", None) != "hypenet":
            raise ValueError(
                f"FastHypeNet runs HypeNet models; got model_type {getattr(config, 'model_type', None)!r}. For a "
                "Transformer teacher, build the equivalent all-attention HypeNet first: hypenet.teachers."
                "build_hypenet_from_teacher(teacher, ['attention'] * L, attention_rope=True, "
                "attention_output_gate=False)."
            )
        self.model, self.config = model.eval(), config
        weight = model.model.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.max_batch, self.max_len, self.prefill_chunk = max_batch, max_len, prefill_chunk
        self.prefill_split: bool | None = None
        self.cache = StaticHybridCache.allocate(config, max_batch, max_len, self.dtype, self.device)
        if fuse_projections:
            for layer, buffers in zip(model.model.layers, self.cache.layers):
                mixer = layer.mixer
                buffers.input_weight = _repack([getattr(mixer, n) for n in _INPUT_PROJECTIONS if hasattr(mixer, n)])
                buffers.mlp_weight = _repack([layer.mlp.gate_proj, layer.mlp.up_proj])
                buffers.mlp_silu = config.hidden_act == "silu"
        self.fused_lightning_step = fused_lightning_step
        if gemv not in ("auto", "cublas", "triton"):
            raise ValueError(f"gemv must be 'auto', 'cublas' or 'triton', got {gemv!r}")
        asked_for_triton = gemv == "triton"
        if gemv == "auto":
            gemv = "triton" if self.device.type == "cuda" and triton_available() else "cublas"
        self.gemv = gemv == "triton" and max_batch == 1
        self.gemv_fusion = fusion_parts(gemv_fusion)
        if pdl == "auto":
            pdl = programmatic_launch_usable(self.device)
        elif not isinstance(pdl, bool):
            raise ValueError(f"pdl must be 'auto', True or False, got {pdl!r}")
        if pdl and not programmatic_launch_usable(self.device):
            where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else self.device.type
            raise ValueError(f"pdl=True (programmatic dependent launch) needs a CUDA GPU of compute capability 9.0 or "
                             f"later (Hopper) and a Triton with gdc_wait; the model is on {where}: build the engine "
                             "with pdl=False")
        self.pdl = pdl
        self.length = 0  # slots filled in every row
        # The decode step's inputs live in fixed buffers, so that a captured graph reads the current values.
        self._token = torch.zeros(max_batch, 1, dtype=torch.long, device=self.device)
        self._slot = torch.zeros(1, dtype=torch.long, device=self.device)

        on_cuda = self.device.type == "cuda"
        self.compiled = on_cuda if compile is None else compile
        self.graphed = on_cuda if cuda_graph is None else cuda_graph
        if self.graphed and not on_cuda:
            raise ValueError("cuda_graph=True needs the model on a CUDA device")
        regions = (_embed, hybrid_layer, _last_logits)
        # (N, K), or (N, K, loop variant) for the fused loops -> the launch settings chosen and every candidate's time
        self.gemv_tuning = {}
        if self.gemv and on_cuda and triton_available():
            weights = self._gemv_weights()
            self.gemv_tuning = tune(weights)
            self.gemv = _all_tuned(weights, strict=asked_for_triton, where=torch.cuda.get_device_name(self.device))
            for loop, fused_weights in self._fused_loop_weights().items():  # the norm / SiLU-gate in the loop
                self.gemv_tuning.update(tune(fused_weights, loop=loop))
        if self.compiled:  # the same compiled layer serves every layer of a mixer type
            _allow_recompiles()
            options = {**_COMPILE_OPTIONS, **(_pdl_compile_options() if pdl else {}), **(compile_options or {})}
            regions = tuple(torch.compile(fn, fullgraph=True, dynamic=False, options=options) for fn in regions)
        self._decode_embed, self._decode_layer, self._decode_logits = regions
        self._graph = self._graph_logits = None
        if self.graphed:
            self._capture()

    def _gemv_weights(self) -> list[torch.Tensor]:
        """The weights the decode step passes to `gemv` when self.gemv: per layer the packed input projections (or
        each one), the output projection, the MLP's packed gate/up (or each) and its down projection; the LM head.
        Linears with a bias stay on F.linear and are left out."""
        weights = []
        for layer, buffers in zip(self.model.model.layers, self.cache.layers):
            mixer, mlp = layer.mixer, layer.mlp
            groups = [
                [buffers.input_weight] if buffers.input_weight is not None
                else [getattr(mixer, n) for n in _INPUT_PROJECTIONS if hasattr(mixer, n)],
                [mixer.o_proj],
                [buffers.mlp_weight] if buffers.mlp_weight is not None else [mlp.gate_proj, mlp.up_proj],
                [mlp.down_proj],
            ]
            weights += [m for group in groups for m in group]
        weights.append(self.model.lm_head)
        return [getattr(m, "weight", m) for m in weights if getattr(m, "bias", None) is None]

    def _fused_loop_weights(self) -> dict[str, list[torch.Tensor]]:
        """The weights whose `gemv` calls take the norm and/or SiLU-gate inside the kernel's loop (gemv_fusion), by
        `loop_variant`: the packed input projections, the packed SiLU MLP's gate/up, the LM head. Tuned apart from
        the plain kernel: the loop loads more per slice, so other launch settings may win."""
        norm, swiglu = "norm" in self.gemv_fusion, "swiglu" in self.gemv_fusion
        groups: dict[str, list[torch.Tensor]] = {}
        for buffers in self.cache.layers:
            if norm and buffers.input_weight is not None:
                groups.setdefault(loop_variant(norm=True), []).append(buffers.input_weight)
            if buffers.mlp_weight is not None and buffers.mlp_silu and (norm or swiglu):
                groups.setdefault(loop_variant(norm, swiglu), []).append(buffers.mlp_weight)
        if norm and getattr(self.model.lm_head, "bias", None) is None:
            groups.setdefault(loop_variant(norm=True), []).append(self.model.lm_head.weight)
        return groups

    # ------------------------------------------------------------------ prefill

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Start new sequences: fill the cache with the prompts; return the last position's logits [B, vocab] (fp32).

        attention_mask: the tokenizer's [B, W] mask, left padding only (tokenizer.padding_side = "left").
        """
        batch, width = input_ids.shape
        if batch > self.max_batch:
            raise ValueError(f"batch of {batch} rows but the engine was built for max_batch={self.max_batch}")
        if width > self.max_len:
            raise ValueError(f"prompt of {width} tokens does not fit the cache (max_len={self.max_len}); "
                             "build the engine with a larger max_len")
        input_ids = input_ids.to(self.device)
        pads = _left_padding(attention_mask, batch, width)
        self.cache.reset()
        self.length = 0
        if not any(pads):
            logits = self._prefill_rows(slice(0, batch), input_ids, lo=0)
        else:  # rows of different lengths: each row alone on its own tokens (no padding inside any kernel)
            self.cache.start[:batch] = torch.tensor(pads, device=self.device)
            logits = torch.cat([
                self._prefill_rows(slice(b, b + 1), input_ids[b:b + 1, pad:], lo=pad) for b, pad in enumerate(pads)
            ])
        self.length = width
        return logits

    def _prefill_rows(self, rows: slice, input_ids: torch.Tensor, lo: int) -> torch.Tensor:
        """Prefill rows `rows` with T unpadded tokens each, at slots [lo, lo + T), in chunks of prefill_chunk."""
        num_rows, total = input_ids.shape
        for begin in range(0, total, self.prefill_chunk):
            ids = input_ids[:, begin:begin + self.prefill_chunk]
            positions = torch.arange(begin, begin + ids.shape[1], device=self.device).expand(num_rows, -1)
            x, ctx = _embed(self.model.model, ids, positions)
            chunk = Chunk(rows, lo=lo, hi=lo + begin + ids.shape[1], split=self.prefill_split)
            for layer, buffers in zip(self.model.model.layers, self.cache.layers):
                x = hybrid_layer(layer, x, ctx, buffers, chunk, self.cache.start)
        return _last_logits(self.model, x)

    # ------------------------------------------------------------------ decode

    def _decode_step(self) -> torch.Tensor:
        """One token per row at slot `_slot` (the captured function). Returns logits [max_batch, vocab] (fp32)."""
        start = self.cache.start
        x, ctx = self._decode_embed(self.model.model, self._token, self._slot - start[:, None])
        chunk = Chunk(slot=self._slot, fused_step=self.fused_lightning_step, gemv=self.gemv,
                      gemv_fusion=self.gemv_fusion, pdl=self.pdl)
        for layer, buffers in zip(self.model.model.layers, self.cache.layers):
            x = self._decode_layer(layer, x, ctx, buffers, chunk, start)
        return self._decode_logits(self.model, x, self.gemv, self.gemv_fusion, self.pdl)

    def _capture(self) -> None:
        """Warm up (compile, autotune) on a side stream, then record the decode step in a CUDA graph."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(3):
                self._decode_step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self._graph):
            self._graph_logits = self._decode_step()
        self.cache.reset()  # the warm-up steps wrote into the states

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row ([B] or [B, 1]) and return the next logits [B, vocab] (fp32)."""
        if self.length >= self.max_len:
            raise ValueError(f"the cache is full (max_len={self.max_len}); build the engine with a larger max_len")
        tokens = tokens.reshape(-1, 1)
        self._token[:tokens.shape[0]].copy_(tokens)
        self._slot.fill_(self.length)
        if self._graph is not None:
            self._graph.replay()
            logits = self._graph_logits
        else:
            logits = self._decode_step()
        self.length += 1
        return logits[:tokens.shape[0]].clone()

    # ------------------------------------------------------------------ generate

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Prompt + generated tokens, [B, W + n] (n <= max_new_tokens), like `model.generate`'s output.

        temperature 0 is greedy; otherwise sampling from softmax(logits / temperature), optionally over the top_k.
        Rows that produced an EOS continue with pad_token_id; generation stops when every row has.
        """
        if input_ids.shape[1] + max_new_tokens - 1 > self.max_len:
            raise ValueError(f"prompt ({input_ids.shape[1]}) + max_new_tokens ({max_new_tokens}) - 1 exceeds the "
                             f"cache's max_len={self.max_len} (the last token is never cached)")
        eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        eos = torch.tensor(eos_ids, dtype=torch.long, device=self.device)
        if len(eos) and pad_token_id is None:
            pad_token_id = int(eos[0])
        logits = self.prefill(input_ids, attention_mask)
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=self.device)
        new_tokens = []
        for step in range(max_new_tokens):
            token = sample(logits, temperature, top_k, generator)
            if len(eos):
                token = torch.where(finished, pad_token_id, token)
                finished |= torch.isin(token, eos)
            new_tokens.append(token)
            if step == max_new_tokens - 1 or (len(eos) and bool(finished.all())):
                break
            logits = self.decode(token)
        return torch.cat([input_ids.to(self.device), torch.stack(new_tokens, dim=1)], dim=1)


def _all_tuned(weights: list[torch.Tensor], strict: bool, where: str) -> bool:
    """Whether `tune` found a launch setting of the Triton matrix-vector kernel for every weight's shape. If not:
    strict (gemv="triton" asked for) raises, else a warning says that the decode step falls back to cuBLAS."""
    failed = sorted({tuple(w.shape) for w in weights if not is_tuned(*w.shape, w.dtype, w.device.type)})
    if not failed:
        return True
    message = f"the Triton matrix-vector kernel ran with none of its launch settings for weight shapes {failed} on " \
        f"{where}"
    if strict:
        raise RuntimeError(f"{message}; build the engine with gemv='cublas' (or 'auto')")
    warnings.warn(f"{message}: the decode step uses cuBLAS instead", stacklevel=3)
    return False


def _pdl_compile_options() -> dict:
    """_PDL_COMPILE_OPTIONS where this torch's Inductor has them (torch 2.10+); else only this package's kernels are
    launched with PDL, and a warning says so."""
    import torch._inductor.config as inductor_config

    if hasattr(inductor_config.triton, "enable_pdl"):
        return _PDL_COMPILE_OPTIONS
    warnings.warn(f"torch {torch.__version__}'s Inductor cannot launch its kernels with programmatic dependent launch "
                  "(triton.enable_pdl): with pdl=True only hypenet's own kernels are", stacklevel=3)
    return {}


def _allow_recompiles(limit: int = 64) -> None:
    """Each engine (model shape, batch, cache length) adds a compiled variant of the same layer function; dynamo's
    default of 8 per function would silently send later engines back to eager mode."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), limit))


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token per row from logits [B, vocab]: argmax at temperature 0, else a draw from the tempered softmax."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]


def _left_padding(attention_mask: torch.Tensor | None, batch: int, width: int) -> list[int]:
    """Padding tokens per row, checking that the mask is left padding (zeros then ones, at least one token)."""
    if attention_mask is None:
        return [0] * batch
    mask = attention_mask.to("cpu", torch.long)
    if mask.shape != (batch, width):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; expected {(batch, width)} like input_ids")
    pads = (width - mask.sum(dim=1)).tolist()
    expected = (torch.arange(width)[None, :] >= torch.tensor(pads)[:, None]).long()
    if not torch.equal(mask, expected):
        raise ValueError("FastHypeNet takes left-padded batches only (tokenizer.padding_side = 'left'): every row's "
                         "attention_mask must be zeros followed by ones")
    if max(pads) >= width:
        raise ValueError("a row of the batch has no tokens (its attention_mask is all zeros)")
    return pads


__all__ = [
    "DEFAULT_PREFILL_CHUNK", "Chunk", "FastHypeNet", "LayerBuffers", "StaticHybridCache", "hybrid_layer", "sample",
]
