"""Fast inference: a static hybrid cache, chunked prefill and a compiled, graph-captured decode step."""

from .._lazy import lazy_names
from .options import DEFAULT_PREFILL_CHUNK

# the engine and its kernels (torch, Triton) load when one of these is first asked for
__getattr__, __dir__ = lazy_names(__name__, globals(), {
    **dict.fromkeys(("decode_attention", "decode_attention_reference", "prefill_attention"), "attention"),
    **dict.fromkeys(("FastHypeNet", "StaticHybridCache", "sample"), "engine")})


__all__ = [
    "DEFAULT_PREFILL_CHUNK",
    "FastHypeNet",
    "StaticHybridCache",
    "decode_attention",
    "decode_attention_reference",
    "prefill_attention",
    "sample",
]
