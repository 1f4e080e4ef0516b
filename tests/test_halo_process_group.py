"""`hypenet convert` takes down the torch.distributed process group its processes started (halo.cli)."""

import sys
import threading

import torch.distributed as dist

from hypenet.cli import main
from hypenet.halo import pipeline
from hypenet.halo.cli import take_down_process_group
from hypenet.halo.config import HaloError


def start_group(path):
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=0, world_size=1)


def test_the_group_a_conversion_started_is_down_when_it_ends(monkeypatch, tmp_path):
    """As accelerate starts it inside the run (under a launcher), on success, on an input error and on Ctrl-C."""
    outcomes = {"done": None, "error": HaloError("a bad input, found after the group started"),
                "interrupted": KeyboardInterrupt()}
    for n, (name, raised) in enumerate(outcomes.items()):
        def run_stages(*args, raised=raised, n=n, **kwargs):
            start_group(tmp_path / f"store{n}")
            assert dist.is_initialized()
            if raised is not None:
                raise raised

        monkeypatch.setattr(pipeline, "run_stages", run_stages)
        code = main(["convert", "--preset", "smoke", "--out", str(tmp_path / name)])
        assert code == {"done": 0, "error": 2, "interrupted": 130}[name]
        assert not dist.is_initialized(), name


def test_a_group_that_was_up_before_is_left_to_its_owner(monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline, "run_stages", lambda *args, **kwargs: None)
    start_group(tmp_path / "store")
    try:
        assert main(["convert", "--preset", "smoke", "--out", str(tmp_path / "out")]) == 0
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


def test_taking_the_group_down_leaves_its_threads_the_gil(monkeypatch):
    """A thread that waits for the GIL as the group goes down (a gloo thread freeing a collective's buffers) gets it
    before the conversion's process exits: one still waiting when the interpreter finalizes aborts the process."""
    order = []
    monkeypatch.setattr(dist, "destroy_process_group", lambda: order.append("group destroyed"))
    woken = threading.Event()
    waiter = threading.Thread(target=lambda: (woken.wait(), order.append("thread ran")))
    waiter.start()
    before = sys.getswitchinterval()
    sys.setswitchinterval(100)  # the main thread hands the GIL over only where it waits
    try:
        woken.set()  # the waiter can go on once it holds the GIL
        take_down_process_group()
        assert order == ["group destroyed", "thread ran"]
    finally:
        sys.setswitchinterval(before)
        waiter.join()
