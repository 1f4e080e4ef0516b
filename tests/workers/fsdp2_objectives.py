"""Run by tests/test_halo_fsdp.py under `torch.distributed.run` on 2 gloo processes: each HALO objective goes through
accelerate's own FSDP2 preparation (`fsdp2_prepare_model`, with the shard units `engine.prepare_fsdp` sets) and
must give the loss and gradients of the same objective unsharded, on one process, over the whole batch.

One accelerate FSDP plugin serves the three stages in turn, as one accelerate state serves every stage of a
conversion. Rank 0 writes what it measured as JSON to argv[1].
"""

import json
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_model
from tiny_halo import objective as tiny_objective
from tiny_halo import tiny_teacher
from torch.distributed.fsdp import FSDPModule

from hypenet.halo import compiling, engine

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
teacher = tiny_teacher()
plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), distributed_type=DistributedType.FSDP,
                              torch_device_mesh=None, mixed_precision="no", is_main_process=rank == 0,
                              device=torch.device("cpu"))
# bf16 as the engine runs it on GPUs: autocast, and accelerate's FSDP plugin as AcceleratorState sets it for bf16
# (prepare_fsdp then replaces its policy)
bf16_plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
bf16_plugin.set_mixed_precision("bf16")
bf16_accelerator = SimpleNamespace(**{**vars(accelerator), "mixed_precision": "bf16",
                                      "state": SimpleNamespace(fsdp_plugin=bf16_plugin)})
input_ids = torch.randint(0, 128, (2 * world, 40))
report = {}
for name in ("stage1", "stage2", "stage3", "stage2-compiled", "stage2-bf16"):
    bf16 = name.endswith("bf16")
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=bf16)
    reference = tiny_objective(name, teacher)
    with autocast:
        loss = reference(input_ids)
    loss.backward()
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}

    sharded = tiny_objective(name, teacher)
    layers = compiling.layers_to_compile(sharded) if name.endswith("compiled") else []
    with compiling.compiled_layers(layers, backend="aot_eager"):
        engine.prepare_fsdp(bf16_accelerator if bf16 else accelerator, sharded, name)
        model = fsdp2_prepare_model(bf16_accelerator if bf16 else accelerator, sharded)
        with autocast:
            local = model(input_ids[rank * 2:(rank + 1) * 2])
        local.backward()
    mean = local.detach().clone()
    dist.all_reduce(mean)
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}
    report[name] = {
        "units": sorted(n for n, m in model.named_modules() if isinstance(m, FSDPModule) and n),
        "sharded": all(type(p).__name__ == "DTensor" for p in model.parameters() if p.requires_grad),
        "loss": loss.item(), "sharded_loss": mean.item() / world, "loss_dtype": str(local.dtype),
        "grads_missing": sorted(set(expected) - set(grads)), "grads_extra": sorted(set(grads) - set(expected)),
        "worst_grad_error": max(((grads[n] - g).abs().max() / g.abs().max().clamp(min=1e-12)).item()
                                for n, g in expected.items() if n in grads),
    }
policy = bf16_plugin.mixed_precision_policy
report["bf16_policy"] = {k: str(getattr(policy, k)) for k in ("param_dtype", "reduce_dtype", "output_dtype",
                                                              "cast_forward_inputs")}
if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(report, f)
dist.destroy_process_group()
