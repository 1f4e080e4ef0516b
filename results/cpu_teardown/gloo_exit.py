"""A bare 2-process gloo program that ends right after a barrier, as a distributed training run does: does a process
abort at exit ("terminate called without an active exception")? Run by `run.sh` under `torch.distributed.run`.

Each process queues 8 all-gathers whose output tensors carry a Python attribute (as DeepSpeed's parameters do: torch
then keeps a tensor's Python object alive while C++ holds the tensor) and drops them, then waits at a barrier. The
barrier keeps the collectives queued before it; the gloo thread that frees the barrier frees them, and needs the GIL
for their Python objects. A switch interval of 10 s (SWITCH) keeps the main thread from handing the GIL over between
the barrier and the interpreter's exit.
  MODE=left-up     the process group left up to the interpreter's exit
  MODE=destroyed   torch.distributed.destroy_process_group() at the end
  MODE=hypenet     hypenet.halo.cli.take_down_process_group() at the end (destroy, then 0.2 s without the GIL)
"""

import os
import sys

import torch
import torch.distributed as dist

sys.setswitchinterval(float(os.environ.get("SWITCH", "10")))
dist.init_process_group("gloo")
for _ in range(8):
    out = torch.empty(2 * 1000)
    dist.all_gather_into_tensor(out, torch.ones(1000), async_op=True)
    out.kept = True
    del out
dist.barrier()
mode = os.environ.get("MODE", "left-up")
if mode == "destroyed":
    dist.destroy_process_group()
elif mode == "hypenet":
    from hypenet.halo.cli import take_down_process_group

    take_down_process_group()
