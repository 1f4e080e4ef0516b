"""Where the time goes, under torch.profiler: one training step (`hypenet bench-train --profile`) or a short repeated
call such as a decode step (`hypenet bench --profile`, `profile_calls`).

`StepProfiler(step, device, path)` is started before the training engine runs and stepped by it after every optimizer
step (`RunSettings.after_step`); it records optimizer step number `step` alone (the step before it traces too, but
is thrown away: the profiler's own warm-up), writes the profiler's table of operators and kernels by self time to
`path`, and keeps a summary: the step's wall time, the GPU kernels' total time, and that time split by kind of kernel.

The kinds come from kernel names (cuBLAS/CUTLASS matmuls, SDPA's flash/cuDNN attention, Triton kernels, PyTorch's
elementwise and reduction kernels, copies): a guide to where the time goes, not an exact attribution.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

# (kind, pattern on the kernel name), first match wins
KERNEL_KINDS = [
    ("hypenet matrix-vector (gemv)", re.compile(r"^gemv_(fused_)?kernel")),
    ("hypenet decode kernels (split-KV attention, lightning step)",
     re.compile(r"split_kv|merge_splits|lightning_step")),
    ("compiled (Inductor)", re.compile(r"^triton_(poi|red|per|tem)_")),
    ("matmul", re.compile(r"gemm|nvjet|cutlass|xmma|cublas|wgmma", re.I)),
    ("softmax attention (flash, cuDNN)", re.compile(r"flash|fmha|cudnn|attention", re.I)),
    ("copy / memset", re.compile(r"^memcpy|^memset|copy_kernel|cat_|CatArray", re.I)),
    ("elementwise / reduction (PyTorch)",
     re.compile(r"elementwise|vectorized|reduce|softmax|norm|unrolled|index", re.I)),
    ("other Triton (fla)", re.compile(r"^triton|_kernel$|^chunk|^fused|^parallel|^bwd|^fwd", re.I)),
]
TABLE_ROWS = 60


def kernel_kind(name: str) -> str:
    return next((kind for kind, pattern in KERNEL_KINDS if pattern.search(name)), "other")


def kernel_seconds_by_kind(events) -> dict[str, float]:
    """Seconds of GPU kernels by kind, from the profiler's events: only the kernels themselves (device-side events
    that are not user annotations), not the operators that launched them or the step's own annotation, which carry
    the same time again."""
    kinds: dict[str, float] = {}
    for e in events:
        if e.device_type != DeviceType.CUDA or e.is_user_annotation:
            continue
        kind = kernel_kind(e.name)
        kinds[kind] = kinds.get(kind, 0.0) + e.time_range.elapsed_us() / 1e6
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


class StepProfiler:
    def __init__(self, step: int, device: torch.device, path: Path):
        if step < 1:
            raise ValueError(f"the profiled step is counted from 1; got {step}")
        self.step, self.path, self.cuda = step, Path(path), device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        warmup = 1 if step >= 2 else 0
        self.profiler = profile(activities=activities, on_trace_ready=self._write,
                                schedule=schedule(wait=step - 1 - warmup, warmup=warmup, active=1, repeat=1))
        self.summary: dict | None = None
        self._tick = self._wall = None

    def __enter__(self) -> StepProfiler:
        self.profiler.__enter__()
        self._tick = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.profiler.__exit__(*exc)

    def after_step(self, step: int) -> None:
        """The engine's hook: step `step` (from 1) has just finished."""
        if self.cuda:  # the step's kernels finish inside its own wall time
            torch.cuda.synchronize()
        now = time.perf_counter()
        if step == self.step:
            self._wall = now - self._tick
        self._tick = now
        self.profiler.step()

    def _write(self, prof) -> None:
        averages = prof.key_averages()
        sort_by = "self_device_time_total" if self.cuda else "self_cpu_time_total"
        kinds = kernel_seconds_by_kind(prof.events()) if self.cuda else {}
        gpu_s = sum(kinds.values())
        self.summary = {
            "step": self.step,
            "wall_s": self._wall,
            "gpu_kernel_s": gpu_s if self.cuda else None,
            "gpu_kernel_s_by_kind": kinds,
            "table": self.path.name,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"optimizer step {self.step}, sorted by {sort_by}\n\n"
                             + averages.table(sort_by=sort_by, row_limit=TABLE_ROWS, max_name_column_width=90) + "\n")


def profile_calls(fn, calls: int, device: torch.device, path: Path, title: str) -> dict:
    """Where the time of a short repeated call goes (`hypenet bench --profile`: a decode step).

    Runs fn once untraced, then `calls` times under torch.profiler. Kernels that a CUDA graph replay launches are
    recorded too. Writes the table of operators and kernels by GPU self time to `path` and returns, per call: the
    wall time, the GPU kernels' busy time, the number of kernels, the busy time by kind of kernel, and the wall time
    not covered by any kernel (launch gaps and host work).
    """
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    cuda = device.type == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        begin = time.perf_counter()
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
        wall = (time.perf_counter() - begin) / calls
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{title}: {calls} calls under the profiler, sorted by {sort_by}\n\n"
                    + prof.key_averages().table(sort_by=sort_by, row_limit=TABLE_ROWS, max_name_column_width=90)
                    + "\n")
    return {"calls": calls, **per_call_summary(prof.events() if cuda else None, calls, wall), "table": path.name}


def per_call_summary(events, calls: int, wall_s: float) -> dict:
    """profile_calls' numbers per call from the profiler's events (None: no GPU, host time only): wall time, GPU busy
    time (kernels only, each counted once), kernel count, busy time by kind, wall time not covered by kernels."""
    if events is None:
        return {"wall_ms": wall_s * 1e3, "gpu_busy_ms": None, "kernels_per_call": None, "gpu_ms_by_kind": {},
                "uncovered_ms": None}
    kernels = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    kinds = {kind: seconds / calls for kind, seconds in kernel_seconds_by_kind(kernels).items()}
    busy = sum(kinds.values())
    return {
        "wall_ms": wall_s * 1e3,
        "gpu_busy_ms": busy * 1e3,
        "kernels_per_call": len(kernels) / calls,
        "gpu_ms_by_kind": {kind: seconds * 1e3 for kind, seconds in kinds.items()},
        "uncovered_ms": (wall_s - busy) * 1e3,
    }
