"""FSDP2 (issue 7): accelerate runs FSDP only on GPUs, so on the CPU the objectives go through accelerate's own FSDP2
preparation by hand (tests/workers/fsdp2_objectives.py, 2 gloo processes): the shard units the engine sets must be
the layers, and the sharded objectives must compute what the unsharded ones do."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from hypenet.halo import engine, stage2
from hypenet.halo.config import HaloError

WORKER = Path(__file__).parent / "workers" / "fsdp2_objectives.py"


@pytest.fixture(scope="module")
def fsdp2_report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fsdp2") / "report.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("name, units", [
    ("stage1", [f"{kind}.{i}" for kind in ("attention_students", "students") for i in range(3)]),
    ("stage2", [f"student.model.layers.{i}" for i in range(3)]),
    ("stage3", [f"model.model.layers.{i}" for i in range(3)]),
    ("stage2-compiled", [f"student.model.layers.{i}" for i in range(3)]),
])
def test_sharded_objectives_match_unsharded(fsdp2_report, name, units):
    """Each stage's units are its layers (one plugin serving the stages in turn), every trained weight is sharded,
    and loss and gradients (the teacher frozen outside, stage 3 checkpointed, stage 2 also compiled) match."""
    got = fsdp2_report[name]
    assert got["units"] == units
    assert got["sharded"]
    assert got["grads_missing"] == [] and got["grads_extra"] == []
    assert got["sharded_loss"] == pytest.approx(got["loss"], rel=1e-5)
    assert got["worst_grad_error"] <= 1e-5


def test_bf16_keeps_fp32_losses_and_master_weights(fsdp2_report):
    """bf16 as on GPUs: weights computed in bf16, gradients averaged in fp32, and nothing cast on the way out, so the
    loss stays fp32 (accelerate's default policy returns it in bf16: the GPU run's FSDP losses were rounded so).
    Sharded and unsharded autocast runs then differ by bf16 rounding only."""
    assert fsdp2_report["bf16_policy"] == {"param_dtype": "torch.bfloat16", "reduce_dtype": "torch.float32",
                                           "output_dtype": "None", "cast_forward_inputs": "False"}
    got = fsdp2_report["stage2-bf16"]
    assert got["loss_dtype"] == "torch.float32" and got["sharded"]
    assert got["sharded_loss"] == pytest.approx(got["loss"], rel=5e-3)
    assert got["grads_missing"] == [] and got["worst_grad_error"] <= 0.1


def fake_fsdp(version: int = 2, policy: str = "transformer_based_wrap", **kwargs):
    plugin = FullyShardedDataParallelPlugin(fsdp_version=version, auto_wrap_policy=policy, **kwargs)
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), distributed_type=DistributedType.FSDP,
                                  mixed_precision="no")
    return accelerator, plugin


def test_prepare_fsdp_reset_what_an_earlier_stage_left():
    import functools

    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    accelerator, plugin = fake_fsdp()
    plugin.auto_wrap_policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={object})
    plugin.transformer_cls_names_to_wrap = ["HypeNetLightningAttention"]  # what stage 1 left in the shared state
    engine.prepare_fsdp(accelerator, stage2.Distillation.__new__(stage2.Distillation), "stage2")
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert plugin.transformer_cls_names_to_wrap == ["HypeNetDecoderLayer"]


def test_prepare_fsdp_keep_a_size_based_policy_and_refuse_fsdp1():
    accelerator, plugin = fake_fsdp(policy="size_based_wrap", min_num_params=1000)
    policy = plugin.auto_wrap_policy
    engine.prepare_fsdp(accelerator, stage2.Distillation.__new__(stage2.Distillation), "stage2")
    assert plugin.auto_wrap_policy is policy and plugin.transformer_cls_names_to_wrap is None
    accelerator, _ = fake_fsdp(version=1)
    with pytest.raises(HaloError, match=r"stage2: FSDP version 1 is not supported; set fsdp_version: 2"):
        engine.prepare_fsdp(accelerator, stage2.Distillation.__new__(stage2.Distillation), "stage2")


def test_prepare_fsdp_touch_nothing_without_fsdp():
    accelerator, plugin = fake_fsdp()
    accelerator.distributed_type = DistributedType.MULTI_GPU
    policy = plugin.auto_wrap_policy
    engine.prepare_fsdp(accelerator, stage2.Distillation.__new__(stage2.Distillation), "stage2")
    assert plugin.auto_wrap_policy is policy and plugin.transformer_cls_names_to_wrap is None
