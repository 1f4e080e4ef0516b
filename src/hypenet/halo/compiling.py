"""`compile: true`: the training stages run each decoder layer, and the loss, through torch.compile.

A stage's objective names the modules worth compiling (`layers_to_compile()`: the student's decoder layers, in
stage 2 the frozen teacher's too, and the fp32 loss over logit slices, `losses.LogitsKL` / `LogitsCrossEntropy`).
Each is compiled on its own, in place (`nn.Module.compile`, so parameter names and checkpoints are unchanged), the
way torchtitan compiles transformer blocks: layers of one kind share one graph, and inductor fuses the elementwise
work around the matmuls (RMSNorms in fp32, RoPE, gates, SiLU, residual adds), which is most of the GPU time of a
small model's step. flash-linear-attention's Triton kernels stay outside the graph (`lightning.py` keeps dynamo
out of them). Stage 1 (per-layer hooks on the teacher) is not compiled.

`compiled_layers` undoes the compilation on exit, so the teacher leaves a stage as it came. While it is active,
dynamo falls back to eager (with a warning) for a layer it cannot compile instead of stopping the run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from torch import nn

log = logging.getLogger(__name__)

BACKEND = "inductor"  # tests use "aot_eager": the same tracing and autograd without code generation


def layers_to_compile(objective: nn.Module) -> list[nn.Module]:
    """The layers a stage's objective asks to be compiled ([] when it names none)."""
    named = getattr(objective, "layers_to_compile", None)
    return list(named()) if callable(named) else []


@contextlib.contextmanager
def compiled_layers(layers: list[nn.Module], backend: str | None = None) -> Iterator[list[nn.Module]]:
    """Compile every module of `layers` in place for the duration of the block, then restore eager calls."""
    import torch._dynamo

    backend = backend or BACKEND
    dynamo = torch._dynamo.config
    suppress, cache_size = dynamo.suppress_errors, dynamo.cache_size_limit
    # Every layer's compiled frame is nn.Module._call_impl: its graphs (one per kind of layer and shape) share a cache.
    dynamo.suppress_errors, dynamo.cache_size_limit = True, max(cache_size, 64)
    try:
        for layer in layers:
            layer.compile(backend=backend, dynamic=False)  # shapes are fixed within a stage; a new one recompiles
        if layers:
            log.info("torch.compile (%s): %d modules (decoder layers or their parts, the loss)", backend, len(layers))
        yield layers
    finally:
        for layer in layers:
            layer._compiled_call_impl = None
        dynamo.suppress_errors, dynamo.cache_size_limit = suppress, cache_size
