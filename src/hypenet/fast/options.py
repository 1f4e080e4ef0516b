"""The fast engine's options that the command line reads before anything loads (no torch): the prefill chunk and
the parts of a decode step's work that the Triton matrix-vector kernel can take in (hypenet.fast.gemv)."""

from __future__ import annotations

DEFAULT_PREFILL_CHUNK = 65536

# The work around a projection that `gemv_fused_kernel` can take in (`project`'s fuse, FastHypeNet's gemv_fusion)
FUSION_PARTS = ("norm", "swiglu", "residual")


def fusion_parts(spec) -> tuple[str, ...]:
    """The parts of FUSION_PARTS named by spec: True (all), False / None / "" / "none" (none), a comma list
    ("swiglu,residual") or an iterable of names; in FUSION_PARTS' order."""
    if spec is True:
        return FUSION_PARTS
    if spec is False or spec is None:
        return ()
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n and n != "none"]
    unknown = sorted(set(names) - set(FUSION_PARTS))
    if unknown:
        raise ValueError(f"unknown gemv fusion part(s) {unknown}: choose among {', '.join(FUSION_PARTS)} "
                         "(or True for all of them)")
    return tuple(n for n in FUSION_PARTS if n in names)
