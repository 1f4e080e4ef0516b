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

Launch settings: `tune` times the candidate settings (`TUNE_CONFIGS`) on the weights the kernel will read, one
weight after another from a CUDA graph (so that none is served from L2, as in a decode step), and remembers the
fastest per weight shape; `gemv_triton` uses it from then on (else `default_blocks`). The engine tunes its own
weights before it captures its decode step.

This file imports only torch and (lazily) triton: kernels never import models.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .attention import triton_available


def gemv_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x: [M, K]; weight: [N, K]. Returns x @ weight.T, [M, N] in x's dtype."""
    return F.linear(x, weight)


@functools.cache
def _kernel():
    """Build the Triton kernel on first use (importing triton only when it is asked for)."""
    import triton
    import triton.language as tl

    @triton.jit
    def gemv_kernel(X, W, Y, N, K, stride_wn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        w_rows = W + rows.to(tl.int64)[:, None] * stride_wn
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_mask = cols < K
            x = tl.load(X + cols, mask=col_mask, other=0.0).to(tl.float32)
            w = tl.load(w_rows + cols[None, :], mask=row_mask[:, None] & col_mask[None, :], other=0.0)
            acc += w.to(tl.float32) * x[None, :]
        tl.store(Y + rows, tl.sum(acc, 1).to(Y.dtype.element_ty), mask=row_mask)

    return triton, gemv_kernel


def default_blocks(n: int, k: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K) before any tuning: 2 rows per program, slices of 1024 columns (whole rows when K is
    smaller): what `tune` chose at every HypeNet-2B decode shape on the H200 (results/fast_bench/gemv/)."""
    return 2, min(1024, max(16, 1 << (k - 1).bit_length()))


# Candidate launch settings for `tune`: (BLOCK_N, BLOCK_K, num_warps, num_stages). On the H200, 4 rows per program won
# at every HypeNet-2B shape among 4-64, then 2 rows x 1024 columns at every shape among 1-16
# (results/fast_bench/gemv/tuning/); the list keeps the neighbours of that winner.
TUNE_CONFIGS = [(2, 1024, 4, 3), (2, 1024, 4, 4), (2, 2048, 4, 3), (2, 512, 4, 4), (4, 1024, 4, 3), (4, 512, 4, 4),
                (1, 1024, 4, 3), (8, 1024, 4, 3)]

# (N, K, dtype, device type) -> the launch settings `tune` found fastest
_TUNED: dict[tuple, tuple[int, int, int, int]] = {}


def launch_settings(n: int, k: int, dtype: torch.dtype, device_type: str = "cuda") -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) for a weight [n, k]: the tuned ones, else `default_blocks`, 4, 3."""
    return _TUNED.get((n, k, dtype, device_type)) or (*default_blocks(n, k), 4, 3)


def tune(weights: list[torch.Tensor], configs=TUNE_CONFIGS, timer=None, again: bool = False
         ) -> dict[tuple[int, int], dict]:
    """Time `configs` for every shape among `weights` (2-D, one device and dtype) and keep the fastest per shape;
    shapes tuned before are skipped unless `again`.

    timer(fn) -> ms: by default the median of CUDA-graph replays of fn, which calls the kernel once on each weight
    of that shape in turn (a decode step's order: every weight comes from memory, not L2). Settings that fail to
    compile are skipped. Returns {(N, K): {"settings": best, "ms": {settings: ms per call}}}."""
    timer = timer or _graph_timer
    by_shape: dict[tuple[int, int], list[torch.Tensor]] = {}
    for w in weights:
        by_shape.setdefault(tuple(w.shape), []).append(w)
    report = {}
    for (n, k), group in by_shape.items():
        if not again and (n, k, group[0].dtype, group[0].device.type) in _TUNED:
            continue
        x = torch.randn(1, k, device=group[0].device, dtype=group[0].dtype)
        times = {}
        for settings in configs:
            block_n, block_k, warps, stages = settings

            def calls(settings=settings):
                for w in group:
                    gemv_triton(x, w, block_n, block_k, num_warps=warps, num_stages=stages)

            try:
                times[settings] = timer(calls) / len(group)
            except Exception:  # noqa: BLE001  (a launch setting that does not compile for this shape)
                continue
        if times:
            best = min(times, key=times.get)
            _TUNED[(n, k, group[0].dtype, group[0].device.type)] = best
            report[(n, k)] = {"settings": best, "ms": times}
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
                num_warps: int | None = None, num_stages: int | None = None) -> torch.Tensor:
    """The Triton kernel; same arguments and result as `gemv_reference`, for one row (M == 1). Launch settings not
    given come from `launch_settings` (tuned, else the defaults)."""
    triton, kernel = _kernel()
    if x.dim() != 2 or x.shape[0] != 1:
        raise ValueError(f"gemv_triton computes one row: x must be [1, K], got {tuple(x.shape)}")
    n, k = weight.shape
    if x.shape[1] != k:
        raise ValueError(f"x has {x.shape[1]} columns but the weight {tuple(weight.shape)} expects {k}")
    if weight.stride(1) != 1 or x.stride(1) != 1:
        raise ValueError("gemv_triton needs x and the weight contiguous in K (the weight's rows)")
    default_n, default_k, default_warps, default_stages = launch_settings(n, k, weight.dtype, weight.device.type)
    block_n, block_k = block_n or default_n, block_k or default_k
    num_warps, num_stages = num_warps or default_warps, num_stages or default_stages
    y = torch.empty(1, n, device=x.device, dtype=x.dtype)
    kernel[(triton.cdiv(n, block_n),)](x, weight, y, n, k, weight.stride(0), BLOCK_N=block_n, BLOCK_K=block_k,
                                       num_warps=num_warps, num_stages=num_stages)
    return y


@torch.library.custom_op("hypenet::gemv", mutates_args=())
def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T for x [M, K]: the Triton kernel on CUDA for one row, else the reference."""
    if x.is_cuda and x.shape[0] == 1 and triton_available():
        return gemv_triton(x.contiguous(), weight)
    return gemv_reference(x, weight)


@gemv.register_fake
def _(x, weight):
    return x.new_empty(x.shape[0], weight.shape[0])


def project(x: torch.Tensor, module_or_weight, use_gemv: bool) -> torch.Tensor:
    """A projection of the engine's decode step: through `gemv` when asked (and the linear has no bias), else
    F.linear. x: [..., K]; module_or_weight: an nn.Linear or a weight [N, K]."""
    weight = getattr(module_or_weight, "weight", module_or_weight)
    bias = getattr(module_or_weight, "bias", None)
    if not use_gemv or bias is not None:
        return F.linear(x, weight, bias)
    return gemv(x.reshape(-1, x.shape[-1]), weight).reshape(*x.shape[:-1], weight.shape[0])


__all__ = ["TUNE_CONFIGS", "default_blocks", "gemv", "gemv_reference", "gemv_triton", "launch_settings", "project",
           "tune"]
