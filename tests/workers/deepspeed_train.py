"""Run by tests/test_halo_deepspeed.py: HALO stages through `engine.train` on the tiny random Qwen3 teacher of
tiny_halo.py, in one process as a conversion runs them, either alone or under `torch.distributed.run` with DeepSpeed
ZeRO on 2 gloo processes (ACCELERATE_USE_DEEPSPEED=true, ACCELERATE_DEEPSPEED_ZERO_STAGE).

accelerate starts DeepSpeed only on accelerators, so on the CPU the accelerate state is made by hand with the gloo
backend (DeepSpeed's CPU accelerator, DS_ACCELERATOR=cpu); from there on the engine runs as under `accelerate launch
--config_file configs/accelerate-zero3.yaml` on GPUs. Environment:
- STAGES, e.g. stage1,stage2,stage3: each with its own batch split; stage 3 starts from stage 2's saved weights, as
  in a conversion; START (with STAGES=stage3): the stage-2 weights to start from;
- MIXED_PRECISION: no or bf16;
- STOP_AT: send this process SIGINT after that optimizer step of stage 2; RESUME=1 continues from the checkpoint.
The main process writes each stage's trained weights (weights.safetensors) and result.json into argv[1]/STAGE, and,
alone, the weights it started from (initial.safetensors).
"""

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tiny_halo import objective, tiny_teacher

from hypenet.data import PackedChunks
from hypenet.halo import engine
from hypenet.halo.cli import take_down_process_group
from hypenet.halo.config import TrainConfig

out = Path(sys.argv[1])
deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
if deepspeed:
    from accelerate import PartialState

    PartialState(cpu=False, backend="gloo")  # the engine's Accelerator takes this state over

teacher = tiny_teacher()
# stage 1 takes 8 sequences a step, stage 2 4, stage 3 4 as 1 per forward: 2 forwards on each of 2 processes
CONFIGS = {"stage1": TrainConfig(tokens=6 * 8 * 32, seq_len=32, batch_size=8, lr=1e-2, warmup_steps=1),
           "stage2": TrainConfig(tokens=6 * 4 * 32, seq_len=32, batch_size=4, lr=1e-2, warmup_steps=1),
           "stage3": TrainConfig(tokens=6 * 4 * 32, seq_len=32, batch_size=4, micro_batch_size=1, lr=1e-2,
                                 warmup_steps=1, grad_clip=0.5)}
chunks = PackedChunks(np.random.default_rng(0).integers(0, 128, 4000), 32, seed=0)
stop_at = int(os.environ.get("STOP_AT", "0"))


def after_step(step: int) -> None:
    if step == stop_at:
        os.kill(os.getpid(), signal.SIGINT)


try:
    weights = load_file(os.environ["START"]) if os.environ.get("START") else None  # stage 3 alone: stage 2's weights
    for stage in os.environ.get("STAGES", "stage2").split(","):
        stage_dir = out / stage
        trained = objective(stage, teacher, weights if stage == "stage3" else None)
        if not deepspeed:  # where training starts from, to measure how far it moved the weights
            stage_dir.mkdir(parents=True, exist_ok=True)
            initial = {k: w.detach().clone() for k, w in trained.state_dict().items()}
            save_file(initial, stage_dir / "initial.safetensors")
        run = engine.RunSettings(checkpoint_every=100, cpu=not deepspeed, resume=os.environ.get("RESUME") == "1",
                                 mixed_precision=os.environ.get("MIXED_PRECISION", "no"),
                                 after_step=after_step if stage == "stage2" else None)
        result = engine.train(stage, trained, CONFIGS[stage], chunks, stage_dir, run)
        if result.state_dict is not None:
            save_file({k: w.clone() for k, w in result.state_dict.items()}, stage_dir / "weights.safetensors")
            (stage_dir / "result.json").write_text(json.dumps({
                "losses": result.losses, "distributed": result.distributed, "processes": result.processes,
                "zero_stage": result.zero_stage, "resumed_from": result.resumed_from}))
        if deepspeed:
            torch.distributed.barrier()  # the main process has written the weights
        weights = load_file(stage_dir / "weights.safetensors")
finally:  # also after the stop's KeyboardInterrupt, as `hypenet convert` does (halo.cli.own_process_group)
    if deepspeed:
        take_down_process_group()
