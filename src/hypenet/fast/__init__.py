"""Fast inference: a static hybrid cache, chunked prefill and a compiled, graph-captured decode step."""

from .options import DEFAULT_PREFILL_CHUNK

_ATTENTION_NAMES = ("decode_attention", "decode_attention_reference", "prefill_attention")
_ENGINE_NAMES = ("FastHypeNet", "StaticHybridCache", "sample")


def __getattr__(name: str):
    """PEP 562: the engine and its kernels (torch, Triton) load when first asked for, not with the command line's
    parser."""
    if name in _ATTENTION_NAMES:
        from . import attention

        return getattr(attention, name)
    if name in _ENGINE_NAMES:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_PREFILL_CHUNK",
    "FastHypeNet",
    "StaticHybridCache",
    "decode_attention",
    "decode_attention_reference",
    "prefill_attention",
    "sample",
]
