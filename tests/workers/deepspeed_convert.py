"""Run by tests/test_halo_deepspeed.py: `hypenet convert` (argv[1:]) under `torch.distributed.run` with DeepSpeed ZeRO
on 2 gloo processes (ACCELERATE_USE_DEEPSPEED=true, ACCELERATE_DEEPSPEED_ZERO_STAGE, DS_ACCELERATOR=cpu).

accelerate starts DeepSpeed only on accelerators, so on the CPU the accelerate state is made here by hand, as in
deepspeed_train.py; the conversion takes it over as it would the state `accelerate launch --config_file
configs/accelerate-zero3.yaml` makes on GPUs."""

import sys
from datetime import timedelta

from accelerate import PartialState

from hypenet.cli import main
from hypenet.halo.cli import take_down_process_group

# a process left waiting in a collective (one that the other never joins) fails in minutes, not gloo's default 30
PartialState(cpu=False, backend="gloo", timeout=timedelta(minutes=3))
try:
    code = main(sys.argv[1:])
finally:  # the group is this worker's, made before the conversion, so the conversion leaves it up (halo.cli)
    take_down_process_group()
sys.exit(code)
