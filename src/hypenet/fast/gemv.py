"""Matrix-vector products for batch-1 decode: y = x W^T for one row x, read at the memory bandwidth.

At batch 1 every projection of a decode step is a matrix-vector product that reads its weight once. On the H200
cuBLAS ran the HypeNet-2B step's products at 1.3-3.2 TB/s (`results/fast_bench/decode_profile/`): the small ones
(2048 x 2048, 8 MB) are over before its kernels reach the bandwidth. Two implementations of `gemv`:
- `gemv_reference`: `F.linear` (cuBLAS on CUDA); any device, any batch.
- `gemv_triton`: one Triton kernel for one row. Each program owns BLOCK_N output rows and walks K in BLOCK_K
  slices, keeping a [BLOCK_N, BLOCK_K] fp32 partial sum that it reduces once at the end; with few rows per program
  (many programs: 1024 for a 2048-row weight at BLOCK_N 2) and several slices in flight per program (num_stages),
  the whole weight is being read at once.
`gemv` is a torch custom op that takes the Triton kernel on CUDA for a single row (else the reference), so
torch.compile sees it as one opaque node and a CUDA graph captures its launch. Whether it beats cuBLAS is measured
by `python -m hypenet.fast.check` (timing rows) and `hypenet bench --gemv triton|cublas`. On the H200 the tuned
kernel beat cuBLAS at every HypeNet-2B decode shape (results/fast_bench/gemv/), so the engine takes it by default
at batch 1 on CUDA (`FastHypeNet(..., gemv="auto")`).

With the work around a projection (`gemv_fused_kernel`, the engine's `gemv_fusion`): the RMSNorm before it,
SiLU(gate) * up after a stacked gate/up product, the residual add after it. SiLU-gate and residual round where eager
PyTorch rounds, so that a step keeps the reference's numbers; the norm is one pass (x's squares summed beside the
product, 1/RMS applied to the sums), as close to fp64 as PyTorch but not equal to it. On the H200
(results/fast_bench/gemv_fusion/) the residual add paid: HypeNet-2B at 128K 2.44 ms against 2.46-2.47 without. The
norm took 2.61 ms at the plain kernel's launch settings, and 2.40 ms with its loop tuned apart (8 rows per
program), and 2.19 ms with the SiLU-gate inside too and programmatic dependent launch (results/fast_bench/main_fused/).
It moves the bf16 step further from the model's own roundings (1.50e-2 against 1.23e-2) but not from the same weights
in fp32 (1.53e-2, where model.forward's bf16 logits are 1.56e-2; results/fast_bench/check_fp32_distance/). So the
engine fuses all three by default (`FUSION_PARTS`); gemv_fusion="residual" keeps the model's roundings closest.

Launch settings: `tune` times the candidate settings (`TUNE_CONFIGS`) on the weights the kernel will read, one
weight after another from a CUDA graph (so that none is served from L2, as in a decode step), and remembers the
fastest per weight shape; `gemv_triton` uses it from then on (else `default_blocks`). The fused kernel with the
norm or SiLU-gate inside its loop loads more per slice and is tuned apart (`tune(..., loop="norm")`); without that
it takes the plain kernel's settings. The engine tunes its own weights before it captures its decode step.

Programmatic dependent launch (`pdl`, the engine's `pdl=True`): the kernel may start while the one before it runs; it
reads its first weight slice (which never depends on that kernel), then waits for that kernel's results before it
reads x. The same products in the same order as without (tested in Triton's interpreter and on the H200, bit for
bit). On the H200 the whole step launched so took 2.29 ms at 128K against 2.44 (results/fast_bench/pdl/).

This file imports only torch and (lazily) triton: kernels never import models.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .attention import programmatic_launch_options, triton_available
from .options import FUSION_PARTS, fusion_parts


def gemv_reference(x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None = None, eps: float = 0.0,
                   residual: torch.Tensor | None = None, swiglu: bool = False) -> torch.Tensor:
    """x: [M, K]; weight: [N, K]. Returns x @ weight.T, [M, N] in x's dtype, with what a decode step does around it:
    - norm_weight (and eps): RMSNorm x first, as the model's `HypeNetRMSNorm` does (fp32 statistics, cast back,
      times the weight in the model's dtype);
    - swiglu: the weight stacks gate and up ([2I, K]); returns SiLU(x Wg) * (x Wu), [M, I];
    - residual: [M, N] added to the result (the residual stream).
    Each step rounds to x's dtype where eager PyTorch does, which the Triton kernel repeats (except inside the
    norm: the kernel never rounds the normalised x)."""
    if norm_weight is not None:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        x = norm_weight * h.to(x.dtype)
    y = F.linear(x, weight)
    if swiglu:
        gate, up = y.chunk(2, dim=-1)
        y = F.silu(gate) * up
    return y if residual is None else residual + y


@functools.cache
def _kernel():
    """Build the Triton kernel on first use (importing triton only when it is asked for)."""
    import triton
    import triton.language as tl

    global _rounded, _weight_slice, _accumulate, _products  # a jit function finds the functions it calls
    # among its module's globals

    # v (fp32) rounded to dtype and back, to nearest even as PyTorch rounds; for bf16 through the bits, so that
    # Triton's CPU interpreter (which truncates in `.to(bfloat16)`) rounds as the GPU does
    @triton.jit
    def _rounded(v, dtype: tl.constexpr):
        if dtype == tl.bfloat16:
            bits = v.to(tl.uint32, bitcast=True)
            bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
            return bits.to(tl.float32, bitcast=True)
        else:
            return v.to(dtype).to(tl.float32)

    # The weight slices a program reads first, issued before it waits for the kernel before it (PEEL, with
    # programmatic dependent launch): the weights never depend on that kernel, only x (and the residual) do.
    @triton.jit
    def _weight_slice(w_rows, up_offset, cols, mask, SWIGLU: tl.constexpr):
        w = tl.load(w_rows + cols[None, :], mask=mask, other=0.0)
        w_up = w
        if SWIGLU:  # the up rows sit up_offset elements below the gate rows
            w_up = tl.load(w_rows + up_offset + cols[None, :], mask=mask, other=0.0)
        return w, w_up

    # One slice of the product: x's slice (times the norm weight, its squares summed) against the weight slices.
    @triton.jit
    def _accumulate(X, NW, cols, col_mask, w, w_up, acc, acc_up, squares, NORM: tl.constexpr,
                    SWIGLU: tl.constexpr):
        x = tl.load(X + cols, mask=col_mask, other=0.0).to(tl.float32)
        if NORM:  # one pass: x's squares summed beside the product of weight * x, scaled by 1/RMS at the end
            squares += x * x
            x = x * tl.load(NW + cols, mask=col_mask, other=0.0).to(tl.float32)
        acc += w.to(tl.float32) * x[None, :]
        if SWIGLU:
            acc_up += w_up.to(tl.float32) * x[None, :]
        return acc, acc_up, squares

    # With USE_GDC (the launch asked for programmatic dependent launch, Hopper and later) a program may start while
    # the kernel before it still runs: it reads its first weight slices, then waits for that kernel's results
    # (gdc_wait) before it reads x, and lets the kernel after it start (gdc_launch_dependents). PEEL reads the first
    # slice before the loop, as USE_GDC needs; the same arithmetic in the same order as the plain loop.
    @triton.jit
    def _products(X, W, NW, N, K, stride_wn, rows, row_mask, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  NORM: tl.constexpr, SWIGLU: tl.constexpr, PEEL: tl.constexpr, USE_GDC: tl.constexpr):
        w_rows = W + rows.to(tl.int64)[:, None] * stride_wn
        up_offset = N * stride_wn
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        acc_up = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        squares = tl.zeros([BLOCK_K], tl.float32)
        first = 0
        if PEEL:
            cols = tl.arange(0, BLOCK_K)
            col_mask = cols < K
            w, w_up = _weight_slice(w_rows, up_offset, cols, row_mask[:, None] & col_mask[None, :], SWIGLU)
            if USE_GDC:
                tl.extra.cuda.gdc_wait()
                tl.extra.cuda.gdc_launch_dependents()
            acc, acc_up, squares = _accumulate(X, NW, cols, col_mask, w, w_up, acc, acc_up, squares, NORM, SWIGLU)
            first = BLOCK_K
        for k0 in range(first, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_mask = cols < K
            w, w_up = _weight_slice(w_rows, up_offset, cols, row_mask[:, None] & col_mask[None, :], SWIGLU)
            acc, acc_up, squares = _accumulate(X, NW, cols, col_mask, w, w_up, acc, acc_up, squares, NORM, SWIGLU)
        return acc, acc_up, squares

    @triton.jit
    def gemv_kernel(X, W, Y, N, K, stride_wn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PEEL: tl.constexpr,
                    USE_GDC: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        acc, _, _ = _products(X, W, X, N, K, stride_wn, rows, row_mask, BLOCK_N, BLOCK_K, False, False, PEEL, USE_GDC)
        tl.store(Y + rows, tl.sum(acc, 1).to(Y.dtype.element_ty), mask=row_mask)

    # gemv_kernel with the RMSNorm of x before, SiLU(gate) * up of stacked gate/up rows, and a residual add after.
    # SiLU-gate and residual round to the output's dtype where eager PyTorch rounds. The norm does not: in one pass
    # over x it sums x's squares beside the product with (norm weight * x) and scales the sums by 1/RMS at the end,
    # so the normalised x is never rounded to dtype as the model's RMSNorm rounds it (in bf16 the outputs differ from
    # the reference by about one rounding step).
    @triton.jit
    def gemv_fused_kernel(X, W, Y, NW, R, N, K, stride_wn, eps, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          NORM: tl.constexpr, SWIGLU: tl.constexpr, RESIDUAL: tl.constexpr, PEEL: tl.constexpr,
                          USE_GDC: tl.constexpr):
        dtype = Y.dtype.element_ty
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        acc, acc_up, squares = _products(X, W, NW, N, K, stride_wn, rows, row_mask, BLOCK_N, BLOCK_K, NORM, SWIGLU,
                                         PEEL, USE_GDC)
        y = tl.sum(acc, 1)
        if NORM:
            rstd = 1.0 / tl.sqrt(tl.sum(squares, 0) / K + eps)
            y = y * rstd
        y = _rounded(y, dtype)
        if SWIGLU:  # SiLU(gate) in dtype, times up, in dtype
            up = tl.sum(acc_up, 1)
            if NORM:
                up = up * rstd
            y = _rounded(_rounded(y * tl.sigmoid(y), dtype) * _rounded(up, dtype), dtype)
        if RESIDUAL:
            y = _rounded(y + tl.load(R + rows, mask=row_mask, other=0.0).to(tl.float32), dtype)
        tl.store(Y + rows, y.to(dtype), mask=row_mask)  # exact: y is already a value of dtype

    return triton, gemv_kernel, gemv_fused_kernel


def default_blocks(n: int, k: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K) before any tuning: 2 rows per program, slices of 1024 columns (whole rows when K is
    smaller): what `tune` chose at every HypeNet-2B decode shape on the H200 (results/fast_bench/gemv/)."""
    return 2, min(1024, max(16, 1 << (k - 1).bit_length()))


# Candidate launch settings for `tune`: (BLOCK_N, BLOCK_K, num_warps, num_stages). On the H200, 4 rows per program won
# at every HypeNet-2B shape among 4-64, then 2 rows x 1024 columns at every shape among 1-16
# (results/fast_bench/gemv/tuning/); the list keeps the neighbours of that winner.
TUNE_CONFIGS = [(2, 1024, 4, 3), (2, 1024, 4, 4), (2, 2048, 4, 3), (2, 512, 4, 4), (4, 1024, 4, 3), (4, 512, 4, 4),
                (1, 1024, 4, 3), (8, 1024, 4, 3)]

# (N, K, dtype, device type, loop) -> the launch settings `tune` found fastest; loop is "" for the plain kernel, else
# the fused parts that change its inner loop ("norm", "swiglu", "norm,swiglu": `loop_variant`)
_TUNED: dict[tuple, tuple[int, int, int, int]] = {}


def loop_variant(norm: bool = False, swiglu: bool = False) -> str:
    """The name under which `tune` keeps launch settings for the kernel with these parts in its loop (the residual
    add comes after the loop and leaves it as the plain kernel's)."""
    return ",".join(part for part, on in (("norm", norm), ("swiglu", swiglu)) if on)


def launch_settings(n: int, k: int, dtype: torch.dtype, device_type: str = "cuda", loop: str = ""
                    ) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) for a weight [n, k]: the ones tuned for this loop variant, else the
    plain kernel's tuned ones, else `default_blocks`, 4, 3."""
    return (_TUNED.get((n, k, dtype, device_type, loop)) or _TUNED.get((n, k, dtype, device_type, ""))
            or (*default_blocks(n, k), 4, 3))


def is_tuned(n: int, k: int, dtype: torch.dtype, device_type: str = "cuda", loop: str = "") -> bool:
    """Whether `tune` found a launch setting that runs for a weight [n, k] of this dtype on this kind of device."""
    return (n, k, dtype, device_type, loop) in _TUNED


def tune(weights: list[torch.Tensor], configs=TUNE_CONFIGS, timer=None, again: bool = False, loop: str = ""
         ) -> dict[tuple, dict]:
    """Time `configs` for every shape among `weights` (2-D, one device and dtype) and keep the fastest per shape;
    shapes tuned before are skipped unless `again`. loop: tune the fused kernel with these parts in its loop
    (`loop_variant`: "norm", "swiglu", "norm,swiglu") instead of the plain one.

    timer(fn) -> ms: by default the median of CUDA-graph replays of fn, which calls the kernel once on each weight
    of that shape in turn (a decode step's order: every weight comes from memory, not L2). Settings that fail to
    compile are skipped. Returns {(N, K) (plain) or (N, K, loop): {"settings": best, "ms": {settings: ms per call}}}."""
    timer = timer or _graph_timer
    by_shape: dict[tuple[int, int], list[torch.Tensor]] = {}
    for w in weights:
        by_shape.setdefault(tuple(w.shape), []).append(w)
    report = {}
    for (n, k), group in by_shape.items():
        if not again and (n, k, group[0].dtype, group[0].device.type, loop) in _TUNED:
            continue
        x = torch.randn(1, k, device=group[0].device, dtype=group[0].dtype)
        fused = {"norm_weight": torch.ones_like(x[0]), "eps": 1e-6} if "norm" in loop else {}
        fused["swiglu"] = "swiglu" in loop
        times = {}
        for settings in configs:

            def calls(settings=settings):
                block_n, block_k, warps, stages = settings
                for w in group:
                    gemv_triton(x, w, block_n, block_k, num_warps=warps, num_stages=stages, **fused)

            try:
                times[settings] = timer(calls) / len(group)
            except Exception:  # noqa: BLE001  (a launch setting that does not compile for this shape)
                continue
        if times:
            best = min(times, key=times.get)
            _TUNED[(n, k, group[0].dtype, group[0].device.type, loop)] = best
            report[(n, k, loop) if loop else (n, k)] = {"settings": best, "ms": times}
    return report


def _graph_timer(fn) -> float:
    """Median ms of replaying fn from a CUDA graph (first run outside the graph: compilation)."""
    from triton.testing import do_bench

    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return do_bench(graph.replay, warmup=3, rep=20, return_mode="median")


def gemv_triton(x: torch.Tensor, weight: torch.Tensor, block_n: int | None = None, block_k: int | None = None,
                num_warps: int | None = None, num_stages: int | None = None, norm_weight: torch.Tensor | None = None,
                eps: float = 0.0, residual: torch.Tensor | None = None, swiglu: bool = False, pdl: bool = False
                ) -> torch.Tensor:
    """The Triton kernel; same arguments and result as `gemv_reference`, for one row (M == 1). Launch settings not
    given come from `launch_settings` for the weight's shape (tuned, else the defaults).

    pdl: launch with programmatic dependent launch (CUDA, compute capability 9.0+; `programmatic_launch_usable`):
    the kernel may start while the one before it runs, reads its first weight slice, then waits for that kernel's
    results before it reads x. Elsewhere (Triton's CPU interpreter) the same kernel without the wait."""
    triton, plain_kernel, fused_kernel = _kernel()
    if x.dim() != 2 or x.shape[0] != 1:
        raise ValueError(f"gemv_triton computes one row: x must be [1, K], got {tuple(x.shape)}")
    rows, k = weight.shape
    if x.shape[1] != k:
        raise ValueError(f"x has {x.shape[1]} columns but the weight {tuple(weight.shape)} expects {k}")
    if weight.stride(1) != 1 or x.stride(1) != 1:
        raise ValueError("gemv_triton needs x and the weight contiguous in K (the weight's rows)")
    if swiglu and rows % 2:
        raise ValueError(f"swiglu needs the gate and up weights stacked (an even number of rows), got {rows}")
    n = rows // 2 if swiglu else rows
    if norm_weight is not None and norm_weight.shape != (k,):
        raise ValueError(f"norm_weight must have shape ({k},), got {tuple(norm_weight.shape)}")
    if residual is not None and residual.shape != (1, n):
        raise ValueError(f"residual must have shape (1, {n}), got {tuple(residual.shape)}")
    default_n, default_k, default_warps, default_stages = launch_settings(
        rows, k, weight.dtype, weight.device.type, loop_variant(norm_weight is not None, swiglu))
    block_n, block_k = block_n or default_n, block_k or default_k
    num_warps, num_stages = num_warps or default_warps, num_stages or default_stages
    launch = {"num_warps": num_warps, "num_stages": num_stages, "PEEL": pdl,
              **programmatic_launch_options(pdl, x.device)}
    y = torch.empty(1, n, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(n, block_n),)
    if norm_weight is None and residual is None and not swiglu:  # the kernel measured on the H200
        plain_kernel[grid](x, weight, y, n, k, weight.stride(0), BLOCK_N=block_n, BLOCK_K=block_k, **launch)
        return y
    norm = norm_weight.contiguous() if norm_weight is not None else x  # x: an unused pointer
    res = residual.contiguous() if residual is not None else x
    fused_kernel[grid](x, weight, y, norm, res, n, k, weight.stride(0), eps, BLOCK_N=block_n, BLOCK_K=block_k,
                       NORM=norm_weight is not None, SWIGLU=swiglu, RESIDUAL=residual is not None, **launch)
    return y


@torch.library.custom_op("hypenet::gemv", mutates_args=())
def gemv(x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None = None, eps: float = 0.0,
         residual: torch.Tensor | None = None, swiglu: bool = False, pdl: bool = False) -> torch.Tensor:
    """`gemv_reference` for x [M, K]: the Triton kernel on CUDA for one row (pdl: launched with programmatic
    dependent launch), else the reference."""
    if x.is_cuda and x.shape[0] == 1 and triton_available():
        return gemv_triton(x.contiguous(), weight, norm_weight=norm_weight, eps=eps, residual=residual, swiglu=swiglu,
                           pdl=pdl)
    return gemv_reference(x, weight, norm_weight, eps, residual, swiglu)


@gemv.register_fake
def _(x, weight, norm_weight=None, eps=0.0, residual=None, swiglu=False, pdl=False):
    return x.new_empty(x.shape[0], weight.shape[0] // 2 if swiglu else weight.shape[0])


def project(x: torch.Tensor, module_or_weight, use_gemv: bool, norm: torch.nn.Module | None = None,
            residual: torch.Tensor | None = None, swiglu: bool = False, fuse=(), pdl: bool = False) -> torch.Tensor:
    """A projection of the engine's decode step, with what surrounds it: residual + act(norm(x) W^T).

    x: [..., K]; module_or_weight: an nn.Linear or a weight [N, K]; norm: an RMSNorm module (`weight`, `eps`) applied
    to x first; swiglu: the weight stacks gate and up, SiLU(gate) * up is returned; residual: added at the end.
    With use_gemv (and no bias) the product is a `gemv` call (one Triton kernel on CUDA at batch 1), and the parts
    of the surrounding work named by fuse (`fusion_parts`: "norm", "swiglu", "residual", or True for all) run
    inside it; everything else is PyTorch ops (the norm through its module). pdl: `gemv`'s kernel launched with
    programmatic dependent launch."""
    weight = getattr(module_or_weight, "weight", module_or_weight)
    bias = getattr(module_or_weight, "bias", None)
    use_gemv = use_gemv and bias is None
    parts = fusion_parts(fuse) if use_gemv else ()
    fused_norm = norm is not None and "norm" in parts
    fused_swiglu = swiglu and "swiglu" in parts
    fused_residual = residual is not None and "residual" in parts
    h = x if norm is None or fused_norm else norm(x)
    if use_gemv:
        out = weight.shape[0] // 2 if fused_swiglu else weight.shape[0]
        y = gemv(h.reshape(-1, h.shape[-1]), weight, norm.weight if fused_norm else None,
                 norm.eps if fused_norm else 0.0, residual.reshape(-1, out) if fused_residual else None,
                 fused_swiglu, pdl).reshape(*h.shape[:-1], out)
    else:
        y = F.linear(h, weight, bias)
    if swiglu and not fused_swiglu:
        gate, up = y.chunk(2, dim=-1)
        y = F.silu(gate) * up
    return y if residual is None or fused_residual else residual + y


__all__ = ["FUSION_PARTS", "TUNE_CONFIGS", "default_blocks", "fusion_parts", "gemv", "gemv_reference", "gemv_triton",
           "is_tuned", "launch_settings", "loop_variant", "project", "tune"]
