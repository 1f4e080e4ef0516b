"""What a run ran on, recorded beside what it measured: a benchmark's timings (`machine_info`), an evaluation's, and
each conversion stage's (`machine_label`, the short form its report shows). Numbers from two machines differ for that
alone: timings, and even the losses of a `deterministic: true` run, which repeat on one kind of GPU only
(docs/TRAINING.md, "Determinism")."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from .errors import MissingInputError

# The first accelerate whose barrier leaves a CPU process group on the CPU (`check_cpu_processes`).
ACCELERATE_CPU_BARRIER = "1.16"

def machine_info(device: torch.device | str) -> dict:
    """The date, the software's versions and the device: the GPU's name, memory, SM count and CUDA version, or the
    CPU's name (with a note that CPU timings are not results)."""
    import transformers

    device = torch.device(device)
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
    }
    for package in ("triton", "fla"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, sms=props.multi_processor_count,
                    cuda=torch.version.cuda)
    else:
        info.update(gpu=None, cpu=cpu_name(), note="CPU run: timings here are not results (only the GPU run's are)")
    return info


def cpu_name() -> str:
    """The CPU's model name where Linux tells it (/proc/cpuinfo), else the architecture, e.g. "x86_64"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_label(device: torch.device | str) -> str:
    """One line for a report (`label` of the device's GPU or CPU name and torch's version), without machine_info's
    imports, e.g. "NVIDIA H100 80GB HBM3, torch 2.11.0+cu130" or "CPU (Intel(R) Xeon(R) Processor), torch
    2.13.0+cpu"."""
    device = torch.device(device)
    return label({"device": str(device), "torch": torch.__version__,
                  "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                  "cpu": cpu_name() if device.type == "cpu" else None})


def label(info: dict) -> str:
    """`machine_info`'s dict (or the part of it a report keeps) in one line: the GPU's name, or "CPU (its name)", or
    the device type, then torch's version."""
    if info.get("gpu"):
        where = info["gpu"]
    elif info.get("cpu"):
        where = f"CPU ({info['cpu']})"
    else:
        where = str(info.get("device", "unknown device")).upper()
    return f"{where}, torch {info.get('torch', 'unknown')}"


def check_cpu_processes(state) -> None:
    """MissingInputError where processes on the CPU (accelerate's MULTI_CPU, gloo) would fail at their first barrier:
    before accelerate 1.16, `wait_for_everyone` passes each process's local rank to torch as a device index, and torch
    runs the barrier on that GPU where one is visible; on a machine with fewer GPUs than processes, those past them fail
    and the others see gloo's "Connection closed by peer". Two CPU processes did so on a one-GPU machine with
    accelerate 1.15.0 (results/gpu_tests/h100_2026-12-07b/)."""
    from accelerate import __version__ as accelerate_version
    from accelerate.utils import DistributedType
    from packaging.version import Version

    if state.distributed_type != DistributedType.MULTI_CPU or not torch.cuda.is_available():
        return
    if Version(accelerate_version) >= Version(ACCELERATE_CPU_BARRIER):
        return
    raise MissingInputError(
        f"{state.num_processes} processes on the CPU, on a machine where a GPU is visible, need accelerate "
        f"{ACCELERATE_CPU_BARRIER} or later: accelerate {accelerate_version} runs their barrier on the GPU of each "
        f"process's rank, and ranks past the machine's GPUs fail. Run `pip install -U 'accelerate>="
        f"{ACCELERATE_CPU_BARRIER}'`, or hide the GPUs (CUDA_VISIBLE_DEVICES= before the launch)")
