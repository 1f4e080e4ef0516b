"""`hypenet bench MODEL...`: prefill/decode speed, memory and the bandwidth floor (see hypenet.bench.run)."""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from ..errors import InvalidInputError
from ..fast.cli import DTYPES
from ..fast.options import DEFAULT_PREFILL_CHUNK, FUSION_PARTS, fusion_parts
from ..units import non_negative_int, positive_float, positive_int, token_list, tokens
from .shapes import SHAPES


def _fusion_parts(text: str) -> str:
    """--gemv-fusion's list, checked: 'residual, swiglu' -> 'swiglu,residual'; 'none' stays."""
    try:
        return ",".join(fusion_parts(text)) or "none"
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(subparsers) -> None:
    """Add the `bench` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "bench", help="prefill/decode speed and memory vs the bandwidth floor (HypeNet vs teacher)",
        description="Benchmark models on one device: prefill seconds, time per output token, tokens/s, peak GPU "
                    "memory (GiB; measured on CUDA only), and the memory-bandwidth floor of a decode step with the "
                    "ratio to it (bandwidth in GB/s, 10^9 bytes/s). MODEL is a named shape with "
                    f"random weights ({', '.join(SHAPES)}) or a checkpoint. Every model runs through the fast engine "
                    "(teachers as all-attention HypeNets); teachers also through transformers' generate. Writes "
                    "bench.json, bench.md and bench_decode.png to --out after every case.")
    parser.add_argument("models", nargs="+", metavar="MODEL", help="named shape or model path")
    parser.add_argument("--contexts", type=token_list, default=tokens("32K,128K,512K,1M"),
                        help="decode contexts, e.g. 128K,512K,1M (default 32K,128K,512K,1M)")
    within = ("; when --contexts holds none of these, its own contexts, so that a small run such as --contexts 1K,2K "
              "on a CPU measures everything at its lengths")
    parser.add_argument("--prefill-contexts", type=token_list, default=None,
                        help="contexts whose prompt is prefilled for real and timed; other contexts decode from a "
                             "random cache of that length (default: those of 128K,512K,1M within the range of "
                             f"--contexts{within}; '' for none)")
    parser.add_argument("--teacher-prefill-contexts", type=token_list, default=None,
                        help=f"the same for teachers in the fast engine (default: 128K if within --contexts{within}; "
                             "'' for none)")
    parser.add_argument("--transformers-contexts", type=token_list, default=None,
                        help="contexts for teachers through transformers' generate (default: those of 128K,512K "
                             f"within the range of --contexts{within}; '' to skip)")
    parser.add_argument("--batch-sizes", type=token_list, default=[1], help="comma list (default 1)")
    parser.add_argument("--decode-tokens", type=positive_int, default=32,
                        help="timed decode steps per case (default 32)")
    parser.add_argument("--warmup-tokens", type=non_negative_int, default=4,
                        help="untimed decode steps first (default 4)")
    parser.add_argument("--prefill-chunk", type=positive_int, default=DEFAULT_PREFILL_CHUNK,
                        help=f"prefill chunk in tokens (default {DEFAULT_PREFILL_CHUNK})")
    parser.add_argument("--device", default="cuda", help="default cuda")
    parser.add_argument("--dtype", choices=["auto", *sorted(DTYPES)], default="auto",
                        help="default auto: bf16 on a GPU, fp32 on a CPU (whose bf16 matmuls are slow and uneven)")
    parser.add_argument("--no-compile", action="store_true", help="decode step without torch.compile")
    parser.add_argument("--no-cuda-graph", action="store_true", help="decode step without CUDA graph capture")
    parser.add_argument("--no-fused-lightning-step", action="store_true",
                        help="decode the lightning recurrence inline (compiled with its layer) instead of the fused "
                             "in-place step: for comparison")
    parser.add_argument("--max-autotune", action="store_true",
                        help="compile the decode step with Inductor's max-autotune (matmul kernels chosen by timing, "
                             "neighbouring elementwise work fused into them); compiling takes minutes")
    parser.add_argument("--gemv", choices=["auto", "cublas", "triton"], default="auto",
                        help="batch-1 decode projections: the Triton matrix-vector kernel of hypenet.fast.gemv "
                             "('triton'; what 'auto' takes on CUDA) or cuBLAS ('cublas')")
    parser.add_argument("--gemv-fusion", nargs="?", type=_fusion_parts, const=",".join(FUSION_PARTS),
                        default=",".join(FUSION_PARTS), metavar="PARTS",
                        help="with the Triton matrix-vector kernel, the work around the projections run inside it: a "
                             f"comma list of {', '.join(FUSION_PARTS)}, or none (default and with no list: all of "
                             "them; FastHypeNet(gemv_fusion=...))")
    parser.add_argument("--pdl", nargs="?", choices=["auto", "on", "off"], const="on", default="auto",
                        help="launch every kernel of the decode step with programmatic dependent launch (Hopper and "
                             "later: each may start while the one before it ends): on (also --pdl alone), off, or "
                             "auto (default: on where the GPU can; FastHypeNet(pdl=...))")
    parser.add_argument("--profile", action="store_true",
                        help="after each decode timing, run a few steps under torch.profiler: kernels per step, GPU "
                             "busy time by kind of kernel, time between kernels (profile_*.txt, bench.md)")
    parser.add_argument("--time-budget-s", type=positive_float, default=480.0,
                        help="skip cases that would end after this many seconds (default 480)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder (default runs/bench)")
    parser.set_defaults(func=run_bench)


DEFAULT_PREFILL, DEFAULT_TEACHER_PREFILL, DEFAULT_TRANSFORMERS = (tokens("128K,512K,1M"), tokens("128K"),
                                                                  tokens("128K,512K"))


def within_contexts(given: list[int] | None, default: list[int], contexts: list[int]) -> list[int]:
    """A context list as given; unset, the defaults within the range of `contexts`, or `contexts` when none is."""
    if given is not None:
        return given
    inside = [c for c in default if min(contexts) <= c <= max(contexts)]
    return inside or sorted(contexts)


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from .run import BenchSettings, run

    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInputError("hypenet bench times the models on a GPU and none is visible; pass --device cpu "
                                "with a tiny shape or a small model and small --contexts (e.g. tiny-hypenet --contexts "
                                "1K,2K) to try it here")
    for spec in args.models:  # a misspelt shape would be looked up on the hub, and fail there after retries
        close = difflib.get_close_matches(spec, SHAPES, n=1) if spec not in SHAPES and not Path(spec).exists() else []
        if close and "/" not in spec:
            raise InvalidInputError(f"{spec} is neither a named shape nor a local model; did you mean {close[0]}? "
                                    f"(named shapes: {', '.join(SHAPES)})")
    settings = BenchSettings(
        models=args.models, contexts=args.contexts, batch_sizes=args.batch_sizes,
        prefill_contexts=within_contexts(args.prefill_contexts, DEFAULT_PREFILL, args.contexts),
        teacher_prefill_contexts=within_contexts(args.teacher_prefill_contexts, DEFAULT_TEACHER_PREFILL,
                                                 args.contexts),
        transformers_contexts=within_contexts(args.transformers_contexts, DEFAULT_TRANSFORMERS, args.contexts),
        decode_tokens=args.decode_tokens, warmup_tokens=args.warmup_tokens, prefill_chunk=args.prefill_chunk,
        device=args.device, dtype=args.dtype if args.dtype != "auto" else (
            "fp32" if torch.device(args.device).type == "cpu" else "bf16"), compile=False if args.no_compile else None,
        cuda_graph=False if args.no_cuda_graph else None,
        fused_lightning_step=not args.no_fused_lightning_step, max_autotune=args.max_autotune, profile=args.profile,
        gemv=args.gemv,
        gemv_fusion=args.gemv_fusion, pdl={"auto": "auto", "on": True, "off": False}[args.pdl],
        time_budget_s=args.time_budget_s, out=args.out,
    )
    report = run(settings)
    print((args.out / "bench.md").read_text())
    return 0 if all(r.get("status") == "ok" or r["status"].startswith(("does not fit", "skipped", "not run"))
                    for r in report["results"]) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hypenet")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(argv if argv is not None else __import__("sys").argv[1:])])
    return args.func(args)
