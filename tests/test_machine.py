"""hypenet.machine: what a run ran on, as reports record it."""

import platform
from pathlib import Path

import pytest
import torch

from hypenet import machine


def test_a_cpu_is_named_by_its_model_where_linux_tells_it():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo here")
    lines = cpuinfo.read_text().splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    if not names:
        pytest.skip("/proc/cpuinfo names no model here")
    assert machine.cpu_name() == names[0]
    assert machine.machine_label("cpu") == f"CPU ({names[0]}), torch {torch.__version__}"
    info = machine.machine_info(torch.device("cpu"))
    assert info["cpu"] == names[0] and info["gpu"] is None and info["torch"] == torch.__version__


def test_without_proc_cpuinfo_the_architecture_names_the_cpu(monkeypatch):
    def unreadable(self, *args, **kwargs):
        raise OSError("no such file")
    monkeypatch.setattr(Path, "read_text", unreadable)
    assert machine.cpu_name() == (platform.processor() or platform.machine())


@pytest.mark.parametrize("kind, gpu, version, refused", [
    ("MULTI_CPU", True, "1.15.0", True),
    ("MULTI_CPU", True, "1.16.0", False),
    ("MULTI_CPU", False, "1.15.0", False),
    ("MULTI_GPU", True, "1.15.0", False),
    ("NO", True, "1.15.0", False),
])
def test_cpu_processes_where_a_gpu_is_visible_need_accelerate_116(kind, gpu, version, refused, monkeypatch):
    """accelerate 1.15.0 ran a CPU process group's barrier on the GPU of each process's rank: two CPU processes of
    bench-train on a one-GPU machine failed with gloo's "Connection closed by peer" (results/gpu_tests/
    h100_2026-12-07b/). The run now says what to do before the first barrier; other versions, machines and process
    kinds go on."""
    import accelerate
    from accelerate.utils import DistributedType

    from hypenet.errors import MissingInputError

    monkeypatch.setattr(accelerate, "__version__", version)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    state = type("State", (), {"distributed_type": DistributedType[kind], "num_processes": 2})()
    if not refused:
        machine.check_cpu_processes(state)
        return
    with pytest.raises(MissingInputError) as error:
        machine.check_cpu_processes(state)
    assert str(error.value) == (
        "2 processes on the CPU, on a machine where a GPU is visible, need accelerate 1.16 or later: accelerate 1.15.0 "
        "runs their barrier on the GPU of each process's rank, and ranks past the machine's GPUs fail. Run `pip "
        "install -U 'accelerate>=1.16'`, or hide the GPUs (CUDA_VISIBLE_DEVICES= before the launch)")
