"""GPU check of the fast path: the split-KV decode kernel and the compiled, graph-captured engine against references,
and the decode kernel's speed against SDPA and the bandwidth it reaches.

    python -m hypenet.fast.check --out DIR        (on a CUDA machine; exits non-zero if a check fails)
    python -m hypenet.fast.check --cpu-dry-run    (this script's own logic on the CPU: reference kernel, no compile)

Checks (rel err = ||out - ref|| / ||ref||, over all logits or outputs of a check; tolerance bf16 1e-2, fp32 1e-4;
the largest elementwise error over max|ref| is reported beside it):
  kernel   decode_attention_triton vs softmax attention in fp64, over valid slots [start, end) of a static cache,
           several shapes (GQA 16/8 d=128, 9/3 d=64, 32/8 d=128, MHA), batch rows of different lengths.
  lightning step  the in-place lightning decode step (Triton) vs the model's recurrence in fp64, 4 steps in a
           row: outputs and the state (which stays fp32: tolerance 1e-4 in both dtypes).
  gemv     the batch-1 matrix-vector kernel (Triton) vs fp64 at HypeNet-2B's decode shapes.
  prefill  a prefill chunk's attention (T queries over S cached keys, bottom-right causal) vs fp64: the mask path
           and the cuDNN split (prefix and chunk apart, merged by log-sum-exp), fp32 and bf16.
  engine   FastHypeNet (compiled + CUDA graph) vs HypeNetForCausalLM.forward on a small random mixed HypeNet:
           prefill logits and 8 decode steps; a left-padded batch vs each row alone; fp32 and bf16 (fp32 runs the
           lightning prefill through the PyTorch backend: fla's fp32 kernels autotune for minutes on a fresh
           machine, and scripts/gpu_check_kernels.py already checks them). bf16 also checks each engine against
           the same weights computed in fp32: at most 2x model.forward's own distance to them (flash-attention's
           test of its bf16 kernels). The batch-1 engines with the matrix-vector op (fast.gemv) are also held to
           model.forward in bf16 within the larger of 1e-2 and model.forward's own distance to fp32 (on a CPU
           with AMX, --cpu-dry-run: that distance 1.6e-2, these rows 1.06e-2). Rows for information: the
           reference's other paths (its cached decode, the lightning layers in PyTorch) against it, and a prefill
           in one chunk (no chunking: what remains is the layer code's).
Timing (bf16): the lightning step at batch 1/8/32 (Triton vs the compiled reference + copy, from a CUDA graph);
the decode step's matrix-vector products, cuBLAS vs the Triton kernel with a few block sizes (CUDA graphs of 28);
(batch 1, 16 query / 8 KV heads, d=128) the decode kernel at 128K/512K/1M with a few launch settings,
against SDPA over exactly the valid keys (flash/cuDNN, no mask), and as GB/s of KV read; prefill attention
through SDPA's backends (TFLOP/s), which bounds the prefill speedup over the teacher, and a 64K chunk over 512K
cached keys both ways (which one the engine takes is printed).
"""

from __future__ import annotations

import os

# fla's fp32 kernels (the reference model's prefill) use TF32 dots unless told otherwise; must precede triton.
os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ..errors import first_line  # noqa: E402
from .attention import (  # noqa: E402
    cudnn_split_usable,
    decode_attention_reference,
    decode_attention_triton,
    default_num_splits,
    prefill_attention,
    programmatic_launch_usable,
)

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
K = 1024


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def measured(row: dict, out: torch.Tensor, ref: torch.Tensor) -> dict:
    """row + rel_err/max_err of out vs ref (a row for information: no ok)."""
    return {**row, "rel_err": rel_err(out, ref), "max_err": max_err(out, ref)}


def compared(row: dict, out: torch.Tensor, ref: torch.Tensor, tolerance: float) -> dict:
    """row + rel_err/max_err of out vs ref, and ok when within tolerance and finite."""
    row = measured(row, out, ref)
    return {**row, "ok": row["rel_err"] <= tolerance and bool(torch.isfinite(out).all())}


def within_reference_distance(row: dict, out: torch.Tensor, exact: torch.Tensor, reference: torch.Tensor,
                              factor: float = 2.0) -> dict:
    """bf16: row + rel_err of out vs the same weights computed in fp32 (exact), ok when at most factor x the
    reference's own distance to them (flash-attention's test of its bf16 kernels, with its factor 2). A test that
    holds however a kernel orders its sums, where one against the bf16 reference measures that order's rounding."""
    bound = factor * rel_err(reference, exact)
    row = measured({**row, "bound": bound}, out, exact)
    return {**row, "ok": row["rel_err"] <= bound and bool(torch.isfinite(out).all())}


def fp64_decode_reference(q, k, v, start, end, scale):
    out = []
    for b in range(q.shape[0]):
        kb, vb = k[b, :, start[b]:end[b]].double(), v[b, :, start[b]:end[b]].double()
        group = q.shape[1] // k.shape[1]
        kb, vb = kb.repeat_interleave(group, 0), vb.repeat_interleave(group, 0)
        p = torch.softmax((q[b].double()[:, None] @ kb.transpose(-1, -2)) * scale, dim=-1)
        out.append((p @ vb)[:, 0])
    return torch.stack(out)


def check_kernel(dtype: torch.dtype, device: str = "cuda", kernel=decode_attention_triton) -> list[dict]:
    rows = []
    shapes = [(1, 16, 8, 128, 8192), (3, 9, 3, 64, 3000), (2, 32, 8, 128, 20000), (2, 4, 4, 256, 1000)]
    for batch, heads, kv_heads, head_dim, max_len in shapes:
        torch.manual_seed(0)
        q = torch.randn(batch, heads, head_dim, device=device, dtype=dtype)
        k = torch.randn(batch, kv_heads, max_len, head_dim, device=device, dtype=dtype)
        v = torch.randn(batch, kv_heads, max_len, head_dim, device=device, dtype=dtype)
        start = torch.randint(0, max_len // 3, (batch,), device=device)
        end = torch.maximum(start + 1, max_len - torch.randint(0, max_len // 3, (batch,), device=device))
        end[0] = start[0] + 1  # a row with a single key
        scale = head_dim**-0.5
        ref = fp64_decode_reference(q, k, v, start.tolist(), end.tolist(), scale)
        for splits in (None, 1, 7):
            options = {"num_splits": splits} if kernel is decode_attention_triton else {}
            out = kernel(q, k, v, start, end, scale, **options)
            case = f"B={batch} H={heads}/{kv_heads} d={head_dim} L={max_len} splits={splits or 'auto'}"
            rows.append(compared({"check": "kernel", "dtype": str(dtype).removeprefix("torch."), "case": case},
                                 out, ref, TOLERANCE[dtype]))
    return rows


def check_lightning_step(dtype: torch.dtype, device: str = "cuda", step=None) -> list[dict]:
    """The lightning layer's in-place decode step (Triton on CUDA) against the model's recurrence in fp64: the
    output and the updated state, several steps in a row (the state carried in its buffer)."""
    from ..model.lightning import lightning_attention_recurrent
    from .recurrent import lightning_step_reference, lightning_step_triton

    step = step or (lightning_step_triton if device == "cuda" else lightning_step_reference)
    rows = []
    for batch, heads, dim in [(1, 16, 128), (4, 9, 64), (32, 16, 128)]:
        torch.manual_seed(0)
        log_decay = -torch.rand(heads, device=device)
        state = torch.randn(batch, heads, dim, dim, device=device) * 0.1
        exact_state = state.double()
        outs, refs = [], []
        for _ in range(4):
            q, k, v = (torch.randn(batch, heads, dim, device=device, dtype=dtype) for _ in range(3))
            outs.append(step(q, k, v, log_decay, state, dim**-0.5))
            g = log_decay.double()[None, None].expand(batch, 1, heads)
            ref, exact_state = lightning_attention_recurrent(q.double()[:, None], k.double()[:, None],
                                                             v.double()[:, None], g, dim**-0.5,
                                                             initial_state=exact_state)
            refs.append(ref[:, 0])
        row = {"check": "lightning step", "dtype": str(dtype).removeprefix("torch."),
               "case": f"B={batch} H={heads} d={dim}, 4 steps"}
        rows.append(compared({**row, "case": row["case"] + ": outputs"}, torch.stack(outs), torch.stack(refs),
                             TOLERANCE[dtype]))
        rows.append(compared({**row, "case": row["case"] + ": state"}, state, exact_state, TOLERANCE[torch.float32]))
    return rows


# HypeNet-2B's batch-1 decode projections (N, K): lightning q/k/v/gate, attention q/k/v/gate, o_proj, MLP gate/up,
# down, LM head
DECODE_GEMV_SHAPES = [(8192, 2048), (6144, 2048), (2048, 2048), (12288, 2048), (2048, 6144), (151936, 2048)]


def check_gemv(dtype: torch.dtype, device: str = "cuda", kernel=None) -> list[dict]:
    """The batch-1 matrix-vector kernel (Triton on CUDA) against fp64, at the decode shapes and a ragged one."""
    from .gemv import gemv_reference, gemv_triton

    kernel = kernel or (gemv_triton if device == "cuda" else gemv_reference)
    rows = []
    for n, k in [*DECODE_GEMV_SHAPES[:5], (1000, 1030)]:
        torch.manual_seed(0)
        x = torch.randn(1, k, device=device, dtype=dtype)
        w = torch.randn(n, k, device=device, dtype=dtype) * k**-0.5
        rows.append(compared({"check": "gemv", "dtype": str(dtype).removeprefix("torch."), "case": f"N={n} K={k}"},
                             kernel(x, w), x.double() @ w.double().T, TOLERANCE[dtype]))
    # with the decode step's work around it (RMSNorm before, SiLU-gate of stacked gate/up, residual add after):
    # against fp64, and against the same steps in PyTorch in the same dtype (the same roundings, except that the
    # kernel's one-pass norm never rounds the normalised x; in bf16 the two also differ by the order of their sums,
    # about as much as each differs from fp64)
    for n, k, what in [(8192, 2048, "norm"), (12288, 2048, "norm+swiglu"), (2048, 6144, "residual")]:
        torch.manual_seed(1)
        x = torch.randn(1, k, device=device, dtype=dtype)
        w = torch.randn(n, k, device=device, dtype=dtype) * k**-0.5
        options = {"norm_weight": 1 + 0.1 * torch.randn(k, device=device, dtype=dtype), "eps": 1e-6} if "norm" in what \
            else {"residual": torch.randn(1, n, device=device, dtype=dtype)}
        options["swiglu"] = "swiglu" in what
        exact = gemv_reference(x.double(), w.double(), **{key: v.double() if torch.is_tensor(v) else v
                                                          for key, v in options.items()})
        out = kernel(x, w, **options)
        row = {"check": "gemv", "dtype": str(dtype).removeprefix("torch.")}
        rows.append(compared({**row, "case": f"N={n} K={k} {what} vs fp64"}, out, exact, TOLERANCE[dtype]))
        rows.append(compared({**row, "case": f"N={n} K={k} {what} vs PyTorch in {row['dtype']}"}, out,
                             gemv_reference(x, w, **options), TOLERANCE[dtype]))
        if kernel is gemv_triton and programmatic_launch_usable(device):  # first slice read before the wait
            rows.append(compared({**row, "case": f"N={n} K={k} {what}, pdl vs without (exact)"},
                                 kernel(x, w, pdl=True, **options), out, 0.0))
    return rows


def check_prefill(dtype: torch.dtype, device: str = "cuda") -> list[dict]:
    """Chunk prefill attention (T queries over S keys, bottom-right causal) against fp64, both ways: the mask path
    and the split into prefix + chunk merged by log-sum-exp (cuDNN's kernels in bf16 on CUDA)."""
    rows = []
    for batch, heads, kv_heads, head_dim, queries, keys in [(1, 16, 8, 128, 1024, 4096), (2, 9, 3, 64, 300, 1000)]:
        torch.manual_seed(0)
        q = torch.randn(batch, queries, heads, head_dim, device=device, dtype=dtype).transpose(1, 2)
        k = torch.randn(batch, kv_heads, keys, head_dim, device=device, dtype=dtype)
        v = torch.randn_like(k)
        scale = head_dim**-0.5
        ref = prefill_attention(q.double(), k.double(), v.double(), scale, split=False)
        for split in (False, True):
            case = f"B={batch} H={heads}/{kv_heads} d={head_dim} T={queries} S={keys} " + \
                ("prefix + chunk merged" if split else "bottom-right mask")
            rows.append(compared({"check": "prefill", "dtype": str(dtype).removeprefix("torch."), "case": case},
                                 prefill_attention(q, k, v, scale, split=split), ref, TOLERANCE[dtype]))
    return rows


def small_hypenet(dtype: torch.dtype, device: str):
    from ..model import HypeNetConfig, HypeNetForCausalLM

    config = HypeNetConfig(
        lightning_backend="torch" if dtype == torch.float32 else "auto",
        vocab_size=1000, hidden_size=512, intermediate_size=1024, num_hidden_layers=5, num_attention_heads=8,
        num_key_value_heads=4, head_dim=64,
        mixer_types=["lightning", "attention", "lightning", "attention", "lightning"],
        attention_logit_scaling_base=50.0, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = HypeNetForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype).eval()


def check_engine(dtype: torch.dtype, device: str = "cuda") -> list[dict]:
    from . import FastHypeNet

    name = str(dtype).removeprefix("torch.")
    rows = []
    model = small_hypenet(dtype, device)
    torch.manual_seed(1)
    ids = torch.randint(1, 1000, (2, 700), device=device)
    with torch.no_grad():
        reference = model(ids).logits.float()
    begin = time.perf_counter()
    # compiled + graph on CUDA; without PDL here (the default where the GPU can): the rows after these compare the two
    engine = FastHypeNet(model, max_batch=2, max_len=1024, prefill_chunk=256, pdl=False)
    rows.append({"check": "engine", "dtype": name, "case": "build (compile + capture)",
                 "seconds": time.perf_counter() - begin, "ok": engine.compiled == engine.graphed == (device == "cuda")})
    tolerance = TOLERANCE[dtype]
    row = {"check": "engine", "dtype": name}
    prefill = engine.prefill(ids[:, :692])
    rows.append(compared({**row, "case": "prefill logits (3 chunks) vs model.forward"}, prefill, reference[:, 691],
                         tolerance))
    decoded = torch.stack([engine.decode(ids[:, t]) for t in range(692, 700)], dim=1)
    rows.append(compared({**row, "case": "8 decode steps (graph replay) vs model.forward"}, decoded,
                         reference[:, 692:700], tolerance))
    batch2_decoded = decoded
    exact = None  # bf16: the same weights' logits in fp32 at positions 691-699, to see which engine is nearer them
    if dtype != torch.float32:
        # For scale: a bf16 difference anywhere (a kernel's accumulation order) grows through bf16's rounding chains
        # to the size of bf16's own error, which the same weights computed in fp32 show.
        exact_model = small_hypenet(torch.float32, device)
        exact_model.load_state_dict(model.state_dict())
        with torch.no_grad():
            exact = exact_model(ids).logits[:, 691:700]
        del exact_model
        rows.append(measured({**row, "case": "info: model.forward vs the same weights in fp32, positions 691-699"},
                             reference[:, 691:700], exact))
        case = "engine prefill + 8 steps vs the same weights in fp32, at most 2x model.forward's distance"
        rows.append(within_reference_distance({**row, "case": case}, torch.cat([prefill[:, None], decoded], dim=1),
                                              exact, reference[:, 691:700]))
        # The reference's own decode path, what generate() runs: model.forward one token at a time with its cache
        with torch.no_grad():
            out = model(ids[:, :692], use_cache=True)
            stepped = []
            for t in range(692, 700):
                out = model(ids[:, t:t + 1], cache=out.past_key_values, use_cache=True)
                stepped.append(out.logits[:, -1].float())
        stepped = torch.stack(stepped, dim=1)
        rows.append(measured({**row, "case": "info: model.forward with its cache, 8 steps, vs model.forward"},
                             stepped, reference[:, 692:700]))
        rows.append(measured({**row, "case": "info: 8 decode steps vs model.forward with its cache"}, decoded,
                             stepped))
        # model.forward with the lightning layers in PyTorch (on CUDA "auto" takes fla's chunk kernels)
        backend, model.config.lightning_backend = model.config.lightning_backend, "torch"
        with torch.no_grad():
            plain = model(ids).logits.float()
        model.config.lightning_backend = backend
        rows.append(measured({**row, "case": "info: model.forward, lightning in PyTorch, vs model.forward"},
                             plain[:, 691:700], reference[:, 691:700]))
        rows.append(measured({**row, "case": "info: 8 decode steps vs model.forward, lightning in PyTorch"}, decoded,
                             plain[:, 692:700]))
        rows.append(measured({**row, "case": "info: model.forward, lightning in PyTorch, vs the same weights in fp32"},
                             plain[:, 691:700], exact))
        # One chunk: the reference's own sequence of ops, so what differs is the layer code, not the chunking.
        chunked, engine.prefill_chunk = engine.prefill_chunk, ids.shape[1]
        rows.append(measured({**row, "case": "info: prefill logits (1 chunk) vs model.forward"},
                             engine.prefill(ids[:, :692]), reference[:, 691]))
        engine.prefill_chunk = chunked
        # Three chunks through one bottom-right-causal SDPA call each instead of the default (on CUDA the cuDNN split)
        engine.prefill_split = False
        unsplit = engine.prefill(ids[:, :692])
        rows.append(measured({**row, "case": "info: prefill logits (3 chunks, prefill_split=False) vs model.forward"},
                             unsplit, reference[:, 691]))
        unsplit_decoded = torch.stack([engine.decode(ids[:, t]) for t in range(692, 700)], dim=1)
        rows.append(measured({**row, "case": "info: 8 decode steps after it vs model.forward"},
                             unsplit_decoded, reference[:, 692:700]))
        engine.prefill_split = None
    # left padding: row 1 is 300 tokens shorter; each row must equal the same row prefilled and decoded alone
    mask = torch.ones_like(ids[:, :600])
    mask[1, :300] = 0
    padded_ids = ids[:, :600] * mask
    batched = [engine.prefill(padded_ids, mask)]
    batched += [engine.decode(ids[:, 600 + t]) for t in range(4)]
    batched = torch.stack(batched, dim=1)
    for b, pad in ((0, 0), (1, 300)):
        alone = [engine.prefill(padded_ids[b:b + 1, pad:])[0]]
        alone += [engine.decode(ids[b:b + 1, 600 + t])[0] for t in range(4)]
        rows.append(compared({**row, "case": f"left-padded batch row {b} (pad {pad}) vs alone, prefill + 4 steps"},
                             batched[b], torch.stack(alone), tolerance))
    if programmatic_launch_usable(device):  # batch 2 with programmatic dependent launch (the default there)
        del engine
        engine = FastHypeNet(model, max_batch=2, max_len=1024, prefill_chunk=256, pdl=True)
        engine.prefill(ids[:, :692])
        decoded = torch.stack([engine.decode(ids[:, t]) for t in range(692, 700)], dim=1)
        rows.append(compared({**row, "case": "batch 2, pdl: 8 decode steps vs model.forward"}, decoded,
                             reference[:, 692:700], tolerance))
        rows.append(measured({**row, "case": "info: batch 2, pdl: vs the same without pdl"}, decoded, batch2_decoded))
    # batch 1 with the decode projections through the Triton matrix-vector kernel (fast.gemv)
    # with the residual adds inside that kernel, with nothing and with everything it can take inside (the default)
    # then (on a GPU that can) every kernel of the step launched with programmatic dependent launch. Against the same
    # engine without it for information: its own kernels compute the same bits (the gemv rows above), but Inductor
    # compiles and tunes the step's other kernels again (on the H200 in fp32: 3.4e-7, not 0)
    by_fusion = {}
    if exact is not None:  # what the rows "vs the same weights in fp32" below compare with
        case = "info: model.forward, row 0, positions 692-699 vs the same weights in fp32"
        rows.append(measured({**row, "case": case}, reference[:1, 692:700], exact[:1, 1:]))
    pdl_cases = [(f, True) for f in ("residual", "norm,swiglu,residual") if programmatic_launch_usable(device)]
    for fusion, pdl in [(f, False) for f in ("residual", "none", "norm,swiglu,residual")] + pdl_cases:
        del engine
        engine = FastHypeNet(model, max_batch=1, max_len=1024, prefill_chunk=256, gemv="triton", gemv_fusion=fusion,
                             pdl=pdl)
        engine.prefill(ids[:1, :692])
        decoded = torch.stack([engine.decode(ids[:1, t]) for t in range(692, 700)], dim=1)
        name = f"batch 1, gemv=triton, gemv_fusion={fusion}{', pdl' if pdl else ''}"
        case, bound = {**row, "case": f"{name}: 8 decode steps vs model.forward"}, tolerance
        if exact is not None:  # bf16: two roundings of one computation may differ by as much as either's own error
            bound = max(tolerance, rel_err(reference[:1, 692:700], exact[:1, 1:]))
            case["bound"] = bound
        rows.append(compared(case, decoded, reference[:1, 692:700], bound))
        if pdl:
            rows.append(measured({**row, "case": f"info: {name}: vs the same without pdl"}, decoded, by_fusion[fusion]))
        else:
            by_fusion[fusion] = decoded
            if exact is not None:  # e.g. the norm inside the kernel rounds less than model.forward: nearer fp32?
                rows.append(within_reference_distance(
                    {**row, "case": f"{name}: vs the same weights in fp32, at most 2x model.forward's distance"},
                    decoded, exact[:1, 1:], reference[:1, 692:700]))
    del engine, model
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def time_kernel() -> list[dict]:
    from triton.testing import do_bench

    rows = []
    heads, kv_heads, head_dim = 16, 8, 128
    for context in (128 * K, 512 * K, 1024 * K):
        torch.manual_seed(0)
        k = torch.randn(1, kv_heads, context, head_dim, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        q = torch.randn(1, heads, head_dim, device="cuda", dtype=torch.bfloat16)
        start = torch.zeros(1, dtype=torch.long, device="cuda")
        end = torch.full((1,), context, dtype=torch.long, device="cuda")
        kv_bytes = 2 * k.numel() * k.element_size()

        def record(variant, fn):
            ms = do_bench(fn, warmup=25, rep=200, return_mode="median")
            rows.append({"check": "timing", "case": f"{context // K}K {variant}", "ms": ms,
                         "kv_read_gbps": kv_bytes / ms / 1e6})

        sdpa_q = q[:, :, None]
        record("SDPA over valid keys (no mask)",
               lambda: F.scaled_dot_product_attention(sdpa_q, k, v, enable_gqa=True))
        auto = default_num_splits(1, kv_heads, context, q.device)
        for block_n, stages, splits in [(64, 2, auto), (64, 3, auto), (128, 2, auto), (32, 3, auto),
                                        (64, 2, 2 * auto), (64, 2, max(1, auto // 2))]:
            record(f"split-KV block_n={block_n} stages={stages} splits={splits}",
                   lambda: decode_attention_triton(q, k, v, start, end, head_dim**-0.5, num_splits=splits,
                                                   block_n=block_n, num_stages=stages))
    return rows


def time_lightning_step() -> list[dict]:
    """The lightning decode step at HypeNet-2B's shape (16 heads, d=128, bf16 q/k/v, fp32 state), batch 1/8/32: the
    Triton kernel against the reference recurrence compiled by Inductor plus its copy into the state buffer (what
    the engine's decode ran before), each replayed from a CUDA graph of 21 calls (one per lightning layer), as
    microseconds per call and GB/s of state read + written."""
    from triton.testing import do_bench

    from ..model.lightning import lightning_attention_recurrent
    from .recurrent import lightning_step_triton

    def inline(q, k, v, log_decay, state, scale):
        g = log_decay.float().expand(q.shape[0], 1, -1)
        o, new_state = lightning_attention_recurrent(q[:, None], k[:, None], v[:, None], g, scale,
                                                     initial_state=state)
        state.copy_(new_state)
        return o[:, 0]

    compiled_inline = torch.compile(inline, fullgraph=True, dynamic=False)
    rows, heads, dim, layers = [], 16, 128, 21
    for batch in (1, 8, 32):
        torch.manual_seed(0)
        q, k, v = (torch.randn(batch, heads, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        log_decay = -torch.rand(heads, device="cuda")
        states = [torch.zeros(batch, heads, dim, dim, device="cuda") for _ in range(layers)]
        state_bytes = 2 * states[0].numel() * 4  # one layer's states, read and written, every row
        for variant, fn in (("Triton kernel (in place)", lightning_step_triton),
                            ("reference recurrence, Inductor + copy", compiled_inline)):
            for state in states[:2]:  # compile / autotune outside the graph
                fn(q, k, v, log_decay, state, dim**-0.5)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for state in states:
                    fn(q, k, v, log_decay, state, dim**-0.5)
            ms = do_bench(graph.replay, warmup=10, rep=100, return_mode="median") / layers
            rows.append({"check": "timing", "case": f"lightning step B={batch} H={heads} d={dim}: {variant}, "
                         f"graph of {layers}", "ms": ms, "kv_read_gbps": state_bytes / ms / 1e6})
    return rows


def time_gemv() -> list[dict]:
    """HypeNet-2B's batch-1 decode projections (bf16): cuBLAS (F.linear) against the Triton matrix-vector kernel with
    each of `gemv.TUNE_CONFIGS` (what the engine's tuning chooses from; the fastest is marked). Each variant is
    replayed from a CUDA graph of 28 calls on 28 different weights (one per layer, so that no weight is served from
    L2; the LM head: 2 weights), as milliseconds per call and GB/s of weight read."""
    import torch.nn.functional as F

    from .gemv import _graph_timer, tune

    rows = []
    for n, k in DECODE_GEMV_SHAPES:
        calls = 2 if n > 100_000 else 28
        torch.manual_seed(0)
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(calls)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        gbps = n * k * 2 / 1e6  # divided by ms

        def cublas(weights=weights, x=x):
            for w in weights:
                F.linear(x, w)

        ms = _graph_timer(cublas) / calls
        rows.append({"check": "timing", "case": f"gemv N={n} K={k}: cuBLAS (F.linear)", "ms": ms,
                     "kv_read_gbps": gbps / ms})
        found = tune(weights, again=True).get((n, k))
        for settings, ms in (found or {"ms": {}})["ms"].items():
            mark = " (fastest: the engine's choice)" if settings == found["settings"] else ""
            rows.append({"check": "timing", "case": f"gemv N={n} K={k}: Triton block_n={settings[0]} "
                         f"block_k={settings[1]} warps={settings[2]} stages={settings[3]}{mark}", "ms": ms,
                         "kv_read_gbps": gbps / ms})
        del weights
        torch.cuda.empty_cache()
    return rows


def time_prefill_attention() -> list[dict]:
    """Prefill attention (bf16, 16 heads, d=128): SDPA's backends on one causal 64K block (what a one-pass prefill
    runs), and the engine's bottom-right-causal chunk of 64K queries over 512K keys, as TFLOP/s."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    rows = []
    heads, head_dim, chunk = 16, 128, 64 * K

    def record(case, flops, fn):
        try:
            ms = do_bench(fn, warmup=2, rep=20, return_mode="median")
            rows.append({"check": "timing", "case": case, "ms": ms, "tflops": flops / ms / 1e9})
        except RuntimeError as error:  # a backend that does not take these inputs
            rows.append({"check": "timing", "case": f"{case}: {first_line(error)[:80]}"})

    q = torch.randn(1, heads, chunk, head_dim, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    causal_flops = 2 * chunk * chunk * head_dim * heads  # 4 T^2 d H / 2
    record("prefill causal 64K, SDPA default", causal_flops,
           lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        def run(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        record(f"prefill causal 64K, SDPA {backend.name}", causal_flops, run)
    keys = 512 * K
    k = torch.randn(1, heads // 2, keys, head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    flops = 4 * chunk * (keys - chunk / 2) * head_dim * heads
    record("prefill chunk 64K over 512K keys, GQA repeat + bottom-right mask (flash)", flops,
           lambda: prefill_attention(q, k, v, head_dim**-0.5, split=False))
    record("prefill chunk 64K over 512K keys, GQA repeat + prefix and chunk merged (cuDNN)", flops,
           lambda: prefill_attention(q, k, v, head_dim**-0.5, split=True))
    rows.append({"check": "info", "case": "the engine's prefill takes the "
                 + ("cuDNN split" if cudnn_split_usable(q) else "bottom-right mask path")})
    return rows


def write_results(rows: list[dict], out: Path, gpu: str, complete: bool) -> str:
    failed = [r for r in rows if r.get("ok") is False]
    verdict = ("PASS" if not failed else "FAIL") if complete else "INCOMPLETE (the run was cut short)"
    info = {"gpu": gpu, "torch": torch.__version__, "results": rows, "passed": not failed and complete}
    (out / "fast_check.json").write_text(json.dumps(info, indent=2) + "\n")
    lines = ["| check | dtype | case | rel err | max err | ms | GB/s or TFLOP/s | ok |", "|---" * 8 + "|"]
    for r in rows:
        case = r.get("case", "") + (f" (bound {r['bound']:.2e})" if "bound" in r else "")
        cells = [r.get("check"), r.get("dtype", ""), case,
                 f"{r['rel_err']:.2e}" if "rel_err" in r else "", f"{r['max_err']:.2e}" if "max_err" in r else "",
                 f"{r['ms']:.3f}" if "ms" in r else (f"{r['seconds']:.1f} s" if "seconds" in r else ""),
                 f"{r['kv_read_gbps']:.0f} GB/s" if "kv_read_gbps" in r else
                 (f"{r['tflops']:.0f} TFLOP/s" if "tflops" in r else ""),
                 {True: "yes", False: "**NO**", None: ""}[r.get("ok")]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    table = "\n".join(lines) + f"\n\nOverall: {verdict}\n"
    (out / "fast_check.md").write_text(f"# Fast path GPU check ({gpu}, torch {torch.__version__})\n\n{table}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/fast_check"))
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated steps to run (e.g. gemv,engine,time_gemv): "
                        "kernel, prefill, lightning_step, gemv, engine, time_lightning_step, time_gemv, time_kernel, "
                        "time_prefill_attention")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run the checks' logic on the CPU (reference decode kernel, no compile/graph, no timing)")
    args = parser.parse_args(argv)
    if args.cpu_dry_run:
        device, kernel = "cpu", decode_attention_reference
    elif torch.cuda.is_available():
        device, kernel = "cuda", decode_attention_triton
    else:
        print("needs a CUDA GPU (or --cpu-dry-run); the CPU tests are tests/test_fast_*.py", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    named = [(name, dtype) for name in ("kernel", "prefill", "lightning_step", "gemv", "engine")
             for dtype in (torch.float32, torch.bfloat16)]
    checks = {"kernel": lambda dtype: check_kernel(dtype, device, kernel), "prefill": lambda dtype: check_prefill(
        dtype, device), "lightning_step": lambda dtype: check_lightning_step(dtype, device),
        "gemv": lambda dtype: check_gemv(dtype, device), "engine": lambda dtype: check_engine(dtype, device)}
    steps = [(name, functools.partial(checks[name], dtype)) for name, dtype in named]
    if device == "cuda" and not args.skip_timing:
        steps += [(fn.__name__, fn) for fn in (time_lightning_step, time_gemv, time_kernel, time_prefill_attention)]
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {name for name, _ in steps}
        if unknown:
            parser.error(f"--only: unknown step(s) {sorted(unknown)}; choose from {sorted({n for n, _ in steps})}")
        steps = [(name, fn) for name, fn in steps if name in wanted]
    gpu = torch.cuda.get_device_name() if device == "cuda" else "none (CPU dry run)"
    begin = time.perf_counter()
    for number, (_, step) in enumerate(steps, 1):
        try:
            rows += step()
        except Exception as error:  # noqa: BLE001  (report every step of a one-shot GPU run)
            traceback.print_exc()
            rows.append({"check": "error", "case": f"{type(error).__name__}: {error}"[:300], "ok": False})
        # after every step: a cut run keeps what it measured
        table = write_results(rows, args.out, gpu, complete=number == len(steps))
        print(f"step {number}/{len(steps)} done at {time.perf_counter() - begin:.0f} s", flush=True)
    print(table)
    return 0 if not any(r.get("ok") is False for r in rows) else 1


if __name__ == "__main__":
    from hypenet.errors import exit_code

    sys.exit(exit_code(main))
