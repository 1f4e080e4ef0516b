"""What a benchmark measures: copy bandwidth, the bytes a decode step must read, timings and peak memory."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from .memory import GIB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """The CUDA allocator's peak since reset_peak_memory, in GiB; None off CUDA (not measured: see bench.memory)."""
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def timed(fn, device: torch.device):
    """(fn(), seconds) with the device synchronised before and after."""
    synchronize(device)
    begin = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - begin


def copy_bandwidth(device: torch.device, nbytes: int = 2**32, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read + written (median of `repeats` copies).

    The buffer (4 GiB on a GPU) is many times the L2 cache, and random so that no copy is special-cased.
    """
    if device.type != "cuda":
        nbytes, repeats = min(nbytes, 2**24), 5
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    seconds = step_times(lambda: dst.copy_(src), repeats, device)
    return 2 * nbytes / statistics.median(seconds)


def matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 4096, repeats: int = 10) -> float:
    """Dense matmul rate in FLOP/s (median of `repeats` square products of `size`; 1024 off the GPU)."""
    if device.type != "cuda":
        size, repeats = min(size, 1024), 3
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    seconds = step_times(lambda: a @ b, repeats, device)
    return 2 * size**3 / statistics.median(seconds)


def step_times(step, count: int, device: torch.device) -> list[float]:
    """Seconds of each of `count` consecutive calls of step(): CUDA events on a GPU (no host sync in between)."""
    if device.type != "cuda":
        times = []
        for _ in range(count):
            _, seconds = timed(step, device)
            times.append(seconds)
        return times
    events = [torch.cuda.Event(enable_timing=True) for _ in range(count + 1)]
    events[0].record()
    for i in range(count):
        step()
        events[i + 1].record()
    torch.cuda.synchronize(device)
    return [events[i].elapsed_time(events[i + 1]) / 1000 for i in range(count)]


def weight_bytes_per_step(model: nn.Module, batch: int) -> int:
    """Parameter bytes a decode step reads: every weight once, but only `batch` rows of an untied input embedding."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    if output is None or output.weight.data_ptr() != embedding.data_ptr():
        total -= embedding.numel() * embedding.element_size() - batch * embedding.shape[1] * embedding.element_size()
    return total


def cache_bytes(config, batch: int, context: int, dtype: torch.dtype) -> dict[str, int]:
    """KV cache bytes of the attention layers and recurrent-state bytes of the lightning layers at `context` tokens.

    Works for HypeNet configs (mixer_types) and plain Transformer configs (every layer attention).
    """
    layers = config.num_hidden_layers
    mixers = getattr(config, "mixer_types", None) or ["attention"] * layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    element = torch.tensor([], dtype=dtype).element_size()
    attention = sum(m == "attention" for m in mixers)
    return {
        "kv": attention * 2 * batch * kv_heads * context * head_dim * element,
        "state": (layers - attention) * batch * heads * head_dim * head_dim * 4,  # fp32 state
    }


def decode_floor(model: nn.Module, batch: int, context: int, bandwidth: float) -> dict[str, float]:
    """The memory-bandwidth floor of one decode step: bytes read (weights + KV cache + states, in GiB) / copy
    bandwidth (`bandwidth` in bytes/s)."""
    dtype = model.get_input_embeddings().weight.dtype
    weights = weight_bytes_per_step(model, batch)
    cache = cache_bytes(model.config, batch, context, dtype)
    total = weights + cache["kv"] + cache["state"]
    return {
        "bytes_per_step_gib": total / GIB,
        "weights_gib": weights / GIB,
        "kv_gib": cache["kv"] / GIB,
        "state_gib": cache["state"] / GIB,
        "floor_ms": 1000 * total / bandwidth,
    }


def summarize_steps(seconds: list[float], batch: int) -> dict[str, float]:
    ms = 1000 * statistics.median(seconds)
    return {
        "ms_per_token": ms,
        "ms_per_token_mean": 1000 * statistics.fmean(seconds),
        "tokens_per_s": 1000 * batch / ms,
    }


def one_pass_prefill_bytes(model: nn.Module, batch: int, context: int) -> dict[str, int]:
    """A lower bound on the memory of prefilling `context` tokens in one forward pass (transformers' generate):
    weights + the whole KV cache + one MLP's live activations (gate/up products: 3 x tokens x FFN) + the residual
    stream with an fp32 norm copy. Used to report, without running it, that a prefill cannot fit."""
    config = model.config
    dtype = model.get_input_embeddings().weight.dtype
    element = torch.tensor([], dtype=dtype).element_size()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    kv = cache_bytes(config, batch, context, dtype)["kv"]
    activations = batch * context * (3 * config.intermediate_size * element + config.hidden_size * (element + 4))
    return {"weights": weights, "kv": kv, "activations": activations, "total": weights + kv + activations}
