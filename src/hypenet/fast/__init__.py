"""Fast inference: a static hybrid cache, chunked prefill and a compiled, graph-captured decode step."""

from .attention import decode_attention, decode_attention_reference, prefill_attention
from .engine import DEFAULT_PREFILL_CHUNK, FastHypeNet, StaticHybridCache, sample

__all__ = [
    "DEFAULT_PREFILL_CHUNK",
    "FastHypeNet",
    "StaticHybridCache",
    "decode_attention",
    "decode_attention_reference",
    "prefill_attention",
    "sample",
]
