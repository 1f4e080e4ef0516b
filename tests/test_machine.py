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
