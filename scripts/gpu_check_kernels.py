"""Check flash-linear-attention's Lightning Attention kernels against the plain-PyTorch ones, and time both.

On the GPU machine (fla installed):   python3 scripts/gpu_check_kernels.py --out results/gpu_kernel_check
On CPU, to test this script itself:   python scripts/gpu_check_kernels.py --cpu-dry-run --out /tmp/dry
  (the dry run compares the torch backend against the token-by-token recurrence, at small sizes)

Checks, for each shape, dtype and length T (rel err = max|a - b| / max|b|, over outputs and final state):
  prefill        chunked prefill from a zero state, constant decay (fla gets the g_gamma hint)
  prefill+state  the same from a random initial state
  decode x8      8 successive T = 1 steps from each backend's own prefill+state final state
  padded g       per-token g with g = k = v = 0 on the first quarter of batch row 0 (fla gets g, no hint)
Exits non-zero if any check fails or is not run.
"""

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

# Full-precision fp32 dots in Triton (its default on NVIDIA is tf32); must be set before triton compiles.
FP32_DOT = sys.argv[sys.argv.index("--fp32-dot") + 1] if "--fp32-dot" in sys.argv else "ieee"
os.environ["TRITON_F32_DEFAULT"] = FP32_DOT

import torch  # noqa: E402


def load_lightning():
    """Load lightning.py by path: it is a leaf module, so this needs neither hypenet nor transformers."""
    path = Path(__file__).resolve().parents[1] / "src" / "hypenet" / "model" / "lightning.py"
    spec = importlib.util.spec_from_file_location("lightning", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lightning = load_lightning()

GPU_SHAPES = [dict(B=2, H=16, K=128, V=128), dict(B=2, H=9, K=64, V=64)]
GPU_LENGTHS = [1, 2, 63, 64, 1000, 4096, 16384]
DRY_SHAPES = [dict(B=2, H=4, K=16, V=16), dict(B=2, H=3, K=8, V=8)]
DRY_LENGTHS = [1, 2, 63, 64, 200]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2}
CHECKS = ["prefill", "prefill+state", "decode x8", "padded g"]
DECODE_STEPS = 8


def trim_fla_autotuning():
    """Keep only the num_warps=4, num_stages<=3 configs of fla's Triton autotuners.

    On a fresh machine the full autotuning compiles dozens of configs per kernel, dtype and decay kind (minutes
    for fp32); every config computes the same result, so the checks hold with fewer. Timings may differ a little.
    """
    import fla.ops.simple_gla  # noqa: F401  (loads the kernels)
    from triton.runtime.autotuner import Autotuner

    trimmed = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("fla.ops") or module is None:
            continue
        for kernel in vars(module).values():
            for _ in range(3):  # the Autotuner may sit under a Heuristics wrapper
                if isinstance(kernel, Autotuner):
                    kept = [c for c in kernel.configs if c.num_warps == 4 and c.num_stages <= 3]
                    if kept and len(kept) < len(kernel.configs):
                        kernel.configs = kept
                        trimmed += 1
                    break
                kernel = getattr(kernel, "fn", None)
    return trimmed


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def make_backends(dry_run):
    """(candidate, reference) callables (q, k, v, g, scale, state, g_gamma) -> (o, final_state)."""
    if dry_run:
        def candidate(q, k, v, g, scale, state, g_gamma):
            return lightning.lightning_attention(q, k, v, g, scale, state, backend="torch", g_gamma=g_gamma)

        def reference(q, k, v, g, scale, state, g_gamma):
            return lightning.lightning_attention_recurrent(q, k, v, g, scale, state)
    else:
        def candidate(q, k, v, g, scale, state, g_gamma):
            return lightning.lightning_attention(q, k, v, g, scale, state, backend="fla", g_gamma=g_gamma)

        def reference(q, k, v, g, scale, state, g_gamma):
            return lightning.lightning_attention(q, k, v, g, scale, state, backend="torch", g_gamma=g_gamma)
    return candidate, reference


def check_case(candidate, reference, shape, dtype, T, device, seed):
    """Rel errs of every check for one shape, dtype and length: {check: {"o": err, "state": err}}."""
    B, H, K, V = shape["B"], shape["H"], shape["K"], shape["V"]
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*size, dtype=dtype):
        return torch.randn(*size, generator=gen, device=device, dtype=dtype)

    q, k, v = randn(B, T, H, K), randn(B, T, H, K), randn(B, T, H, V)
    state0 = randn(B, H, K, V, dtype=torch.float32)
    g_gamma = lightning.alibi_log_decay(H).to(device)
    g = g_gamma.expand(B, T, H)
    scale = K**-0.5
    errs = {}

    def compare(name, out_candidate, out_reference):
        errs[name] = {"o": rel_err(out_candidate[0], out_reference[0]),
                      "state": rel_err(out_candidate[1], out_reference[1])}

    compare("prefill", candidate(q, k, v, g, scale, None, g_gamma), reference(q, k, v, g, scale, None, g_gamma))
    prefill_c = candidate(q, k, v, g, scale, state0, g_gamma)
    prefill_r = reference(q, k, v, g, scale, state0, g_gamma)
    compare("prefill+state", prefill_c, prefill_r)

    q1, k1, v1 = randn(B, DECODE_STEPS, H, K), randn(B, DECODE_STEPS, H, K), randn(B, DECODE_STEPS, H, V)
    g1 = g_gamma.expand(B, 1, H)
    state_c, state_r, outs_c, outs_r = prefill_c[1], prefill_r[1], [], []
    for t in range(DECODE_STEPS):
        step = slice(t, t + 1)
        o_c, state_c = candidate(q1[:, step], k1[:, step], v1[:, step], g1, scale, state_c, g_gamma)
        o_r, state_r = reference(q1[:, step], k1[:, step], v1[:, step], g1, scale, state_r, g_gamma)
        outs_c.append(o_c)
        outs_r.append(o_r)
    compare("decode x8", (torch.cat(outs_c, 1), state_c), (torch.cat(outs_r, 1), state_r))

    pad = (T + 3) // 4
    g_pad, k_pad, v_pad = g.clone(), k.clone(), v.clone()
    g_pad[0, :pad], k_pad[0, :pad], v_pad[0, :pad] = 0, 0, 0
    compare(
        "padded g",
        candidate(q, k_pad, v_pad, g_pad, scale, state0, None),
        reference(q, k_pad, v_pad, g_pad, scale, state0, None),
    )
    return errs


def time_ms(fn, device, warmup=3, iters=20):
    """Median milliseconds per call, with CUDA events on a GPU (perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
    return sorted(times)[len(times) // 2]


def time_backends(candidate, reference, shape, dtype_name, T, device):
    B, H, K, V = shape["B"], shape["H"], shape["K"], shape["V"]
    dtype = DTYPES[dtype_name]
    q, k = (torch.randn(B, T, H, K, device=device, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, device=device, dtype=dtype)
    g_gamma = lightning.alibi_log_decay(H).to(device)
    g = g_gamma.expand(B, T, H)
    state = torch.randn(B, H, K, V, device=device)
    rows = []
    for op, (q_, k_, v_, g_) in {
        f"prefill T={T}": (q, k, v, g),
        "decode step (T=1)": (q[:, :1], k[:, :1], v[:, :1], g[:, :1]),
    }.items():
        ms = {
            name: time_ms(lambda f=f: f(q_, k_, v_, g_, K**-0.5, state, g_gamma), device)
            for name, f in (("candidate", candidate), ("reference", reference))
        }
        rows.append(dict(op=op, shape=shape, dtype=dtype_name, **{f"{n}_ms": t for n, t in ms.items()}))
        print(f"  {op} {dtype_name}: candidate {ms['candidate']:.3f} ms, "
              f"reference {ms['reference']:.3f} ms", flush=True)
    return rows


def shape_name(shape):
    return "B={B} H={H} K={K} V={V}".format(**shape)


def render_markdown(report):
    names = report["names"]
    lines = [
        f"# Lightning Attention kernels: {names['candidate']} vs {names['reference']}",
        "",
        f"Device: {report['env']['device']}; torch {report['env']['torch']}, triton {report['env']['triton']}, "
        f"fla {report['env']['fla']}; Triton fp32 dots: {report['env']['triton_fp32_dot']}.",
        "",
        "rel err = max|a - b| / max|b|, the larger of outputs' and final state's; "
        f"tolerance fp32 {TOLERANCE['fp32']:g}, bf16 {TOLERANCE['bf16']:g}.",
        "",
        "| shape | dtype | T | " + " | ".join(CHECKS) + " | ok |",
        "|---|---|---|" + "---|" * len(CHECKS) + "---|",
    ]
    for case in report["cases"]:
        if "errs" in case:
            cells = [f"{max(case['errs'][c].values()):.2e}" for c in CHECKS]
        else:
            cells = [case.get("error", "not run").splitlines()[-1][:60]] + [""] * (len(CHECKS) - 1)
        ok = "yes" if case["passed"] else "**NO**"
        lines.append(
            f"| {shape_name(case['shape'])} | {case['dtype']} | {case['T']} | " + " | ".join(cells) + f" | {ok} |"
        )
    if report["timings"]:
        lines += [
            "",
            f"Timings (median of 20 after 3 warm-up calls; CUDA events on GPU), {names['candidate']} vs "
            f"{names['reference']}:",
            "",
            f"| op | shape | dtype | {names['candidate']} ms | {names['reference']} ms | speedup |",
            "|---|---|---|---|---|---|",
        ]
        for row in report["timings"]:
            speedup = row["reference_ms"] / row["candidate_ms"]
            lines.append(
                f"| {row['op']} | {shape_name(row['shape'])} | {row['dtype']} | {row['candidate_ms']:.3f} | "
                f"{row['reference_ms']:.3f} | {speedup:.1f}x |"
            )
    lines += ["", f"Overall: {'PASS' if report['passed'] else 'FAIL'}", ""]
    return "\n".join(lines)


def environment(device):
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    try:
        import fla

        fla_version = fla.__version__
    except ImportError as error:
        fla_version = f"not importable ({error})"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return dict(
        device=name, torch=torch.__version__, cuda=torch.version.cuda, triton=triton_version, fla=fla_version,
        python=platform.python_version(), triton_fp32_dot=os.environ["TRITON_F32_DEFAULT"],
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/", help="directory for kernel_check.json and kernel_check.md")
    parser.add_argument("--cpu-dry-run", action="store_true", help="torch chunked vs recurrent on CPU, small sizes")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--lengths", nargs="+", type=int, help="override the sequence lengths")
    parser.add_argument("--shapes", nargs="+", type=int, help="indices of the shapes to check (default all)")
    parser.add_argument("--timing-length", type=int, help="T of the timed prefill (default: the longest length)")
    parser.add_argument("--fp32-dot", choices=["ieee", "tf32"], default="ieee", help="Triton's fp32 dot precision")
    parser.add_argument("--trim-autotune", action="store_true", help="fewer fla autotune configs (faster start)")
    parser.add_argument("--time-budget-s", type=float, default=1e9, help="skip (and fail) checks not started by then")
    args = parser.parse_args()

    started = time.monotonic()
    dry_run = args.cpu_dry_run
    device = torch.device("cpu" if dry_run else "cuda")
    shapes = DRY_SHAPES if dry_run else GPU_SHAPES
    shapes = [shapes[i] for i in args.shapes] if args.shapes else shapes
    lengths = args.lengths or (DRY_LENGTHS if dry_run else GPU_LENGTHS)
    timing_length = args.timing_length or max(lengths)
    candidate, reference = make_backends(dry_run)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = dict(
        names=dict(candidate="torch" if dry_run else "fla", reference="recurrent" if dry_run else "torch"),
        env=environment(device), command=" ".join(sys.argv), cases=[], timings=[], passed=False,
    )
    print(json.dumps(report["env"]), flush=True)
    if not dry_run:
        try:
            import fla.ops.simple_gla  # noqa: F401  (surface the real import error, if any)
        except Exception:
            traceback.print_exc()
        if args.trim_autotune:
            try:
                report["env"]["trimmed_autotuners"] = trim_fla_autotuning()
                print(f"trimmed {report['env']['trimmed_autotuners']} fla autotuners", flush=True)
            except Exception:
                traceback.print_exc()

    def save():
        report["passed"] = bool(report["cases"]) and all(case["passed"] for case in report["cases"])
        (out / "kernel_check.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "kernel_check.md").write_text(render_markdown(report))

    with torch.inference_mode():
        for shape_index, shape in enumerate(shapes):
            for dtype_name in args.dtypes:
                for T in lengths:
                    case = dict(shape=shape, dtype=dtype_name, T=T, passed=False)
                    report["cases"].append(case)
                    if time.monotonic() - started > args.time_budget_s:
                        case["error"] = "not run: time budget spent"
                        continue
                    try:
                        seed = 1000 * shape_index + T
                        case["errs"] = check_case(candidate, reference, shape, DTYPES[dtype_name], T, device, seed)
                        worst = max(max(e.values()) for e in case["errs"].values())
                        case["passed"] = worst < TOLERANCE[dtype_name]
                    except Exception:
                        case["error"] = traceback.format_exc()
                        print(case["error"], flush=True)
                    status = "ok" if case["passed"] else "FAIL"
                    summary = {c: f"{max(e.values()):.1e}" for c, e in case.get("errs", {}).items()}
                    print(f"{shape_name(shape)} {dtype_name} T={T}: {status} {summary} "
                          f"[{time.monotonic() - started:.0f}s]", flush=True)
                    save()
                if shape_index == 0:  # time the first shape only, before the second shape's checks
                    try:
                        report["timings"] += time_backends(candidate, reference, shape, dtype_name, timing_length,
                                                           device)
                    except Exception:
                        report["timing_error"] = traceback.format_exc()
                        print(report["timing_error"], flush=True)
                    save()
    save()
    print(render_markdown(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
