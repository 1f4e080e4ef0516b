"""DeepSpeed ZeRO on 2 CPU processes. Through the training engine (tests/workers/deepspeed_train.py): stages 1-3
run one after the other in one process as in a conversion (each with its own batch split: one DeepSpeed config serves
them all), match one process, the trained weights come back as fp32 masters (also under ZeRO-3 and bf16, without
accelerate's `zero3_save_16bit_model`), and a stop / resume continues exactly. The whole `hypenet convert` under
ZeRO-3 and ZeRO-2 (tests/workers/deepspeed_convert.py): every stage, the selection and the export match the
one-process conversion of test_halo_pipeline.py, and under ZeRO-3 a conversion stopped by Ctrl-C resumes to the same
exported weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils import DeepSpeedPlugin
from safetensors.torch import load_file
from test_halo_pipeline import (  # noqa: F401  (assets, qwen3_conversion: fixtures)
    assets,
    check_conversion,
    cli_args,
    copy_done_stages,
    ctrl_c_in_two_process_stage2,
    qwen3_conversion,
    read_losses,
    steps_after_resume,
)

from hypenet.halo import engine
from hypenet.halo.config import TrainConfig
from hypenet.halo.pipeline import STAGES

WORKER = Path(__file__).parent / "workers" / "deepspeed_train.py"
CONVERT_WORKER = Path(__file__).parent / "workers" / "deepspeed_convert.py"


def worker_command(worker: Path, args: list[str], zero_stage: int | None = None, **env) -> tuple[list[str], dict]:
    """(command, environment) of `worker` in one process (zero_stage None) or on 2 processes under DeepSpeed
    ZeRO-`zero_stage`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **env}
    command = [sys.executable, str(worker), *args]
    if zero_stage is not None:
        env.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE=str(zero_stage))
        command[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return command, env


def run_worker(out: Path, zero_stage: int | None = None, check: bool = True, **env) -> subprocess.CompletedProcess:
    """The engine's worker in one process (zero_stage None) or on 2 processes under DeepSpeed ZeRO-`zero_stage`."""
    command, env = worker_command(WORKER, [str(out)], zero_stage, **env)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def outcome(stage_dir: Path) -> tuple[dict, dict]:
    return json.loads((stage_dir / "result.json").read_text()), load_file(stage_dir / "weights.safetensors")


@pytest.fixture(scope="module")
def zero3(tmp_path_factory) -> Path:
    """Stages 1-3 under ZeRO-3, then each alone in one process from the same weights: stage 3 from the ZeRO-3
    run's stage 2: from one process's stage 2 (a random student under Adam at lr 1e-2), stage 2's differences, 1e-6 on
    average, grow to 1e-4 in stage 3's 6 steps."""
    root = tmp_path_factory.mktemp("deepspeed")
    run_worker(root / "zero3", zero_stage=3, STAGES="stage1,stage2,stage3")
    run_worker(root / "one", STAGES="stage1,stage2")
    run_worker(root / "one", STAGES="stage3", START=str(root / "zero3" / "stage2" / "weights.safetensors"))
    return root


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3"])
def test_zero3_matches_one_process(zero3, stage):
    """ZeRO-3 shards every weight over the 2 processes. Stage 1 takes 8 sequences a step, stage 2 4; stage 3 takes
    its 4 as 2 forwards per process and recomputes its checkpointed layers."""
    (result, weights), (expected, expected_weights) = outcome(zero3 / "zero3" / stage), outcome(zero3 / "one" / stage)
    assert (result["distributed"], result["processes"], result["zero_stage"]) == ("DEEPSPEED", 2, 3)
    assert (expected["distributed"], expected["zero_stage"]) == ("NO", None)
    assert result["losses"] == pytest.approx(expected["losses"], rel=1e-5)
    assert weights.keys() == expected_weights.keys()
    assert {str(w.dtype) for w in weights.values()} == {"torch.float32"}
    # sharded gradients are summed in another order: within 1% of how far the 6 steps moved the weights (measured:
    # 3e-4% in stage 1, 0.28% in stage 2, 0.04% in stage 3)
    initial = load_file(zero3 / "one" / stage / "initial.safetensors")
    moved = max((expected_weights[k] - initial[k]).abs().max().item() for k in initial)
    worst = max((weights[k] - expected_weights[k]).abs().max().item() for k in weights)
    assert worst <= 1e-2 * moved, (worst, moved)


def test_zero3_stop_and_resume_continue_exactly(zero3):
    """SIGINT after step 3 in both processes: one DeepSpeed checkpoint of step 3; the resumed run ends where the
    uninterrupted ZeRO-3 run does, loss for loss and weight for weight."""
    out = zero3 / "zero3-stopped"
    stopped = run_worker(out, zero_stage=3, check=False, STOP_AT="3")
    assert stopped.returncode != 0, stopped.stderr[-3000:]
    assert stopped.stderr.count("stopped by signal after step 3") == 2  # both processes, at the same step
    assert [p.name for p in (out / "stage2" / "checkpoints").iterdir()] == ["step-00000003"]
    run_worker(out, zero_stage=3, RESUME="1")
    (result, weights), (expected, expected_weights) = outcome(out / "stage2"), outcome(zero3 / "zero3" / "stage2")
    assert result["resumed_from"] == 3 and result["losses"] == expected["losses"]
    for name, weight in expected_weights.items():
        torch.testing.assert_close(weights[name], weight, rtol=0, atol=0)


def test_zero2_bf16_gathers_the_fp32_master_weights(zero3):
    """Under bf16 the module's weights are bf16 copies; what the next stage starts from is the fp32 masters."""
    out = zero3 / "zero2-bf16"
    run_worker(out, zero_stage=2, MIXED_PRECISION="bf16")
    result, weights = outcome(out / "stage2")
    assert (result["distributed"], result["processes"], result["zero_stage"]) == ("DEEPSPEED", 2, 2)
    assert {str(w.dtype) for w in weights.values()} == {"torch.float32"}
    trained = weights["student.model.layers.1.self_attn.q_proj.weight"]
    assert not torch.equal(trained.bfloat16().float(), trained)  # not bf16 values stored in fp32
    # the same training, in bf16 (this run's 6 losses stay within 2.1% of the fp32 ones)
    expected, _ = outcome(zero3 / "one" / "stage2")
    assert result["losses"] == pytest.approx(expected["losses"], rel=5e-2)


def test_each_stage_sets_its_own_batch_accumulation_and_clipping():
    """accelerate fills only the DeepSpeed values left "auto": the engine sets each stage's, over the last stage's."""
    plugin = DeepSpeedPlugin(zero_stage=3)
    first = TrainConfig(tokens=1, seq_len=8, batch_size=16, grad_clip=1.0)
    engine.configure_deepspeed(plugin.deepspeed_config, first, micro=8, accumulation=1, processes=2)
    second = TrainConfig(tokens=1, seq_len=8, batch_size=8, micro_batch_size=1, grad_clip=0.0)
    engine.configure_deepspeed(plugin.deepspeed_config, second, micro=1, accumulation=4, processes=2)
    got = {k: plugin.deepspeed_config[k] for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                                                   "train_batch_size", "gradient_clipping")}
    assert got == {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 4, "train_batch_size": 8,
                   "gradient_clipping": 0.0}
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == 3  # the rest as launched


# ---- the whole conversion under ZeRO-3 (and ZeRO-2) ----------------------------------------------------------------


def zero3_convert(assets, out: Path, *extra: str, zero_stage: int = 3) -> tuple[list[str], dict]:  # noqa: F811
    """(command, environment) of `hypenet convert` of test_halo_pipeline's tiny Qwen3, with its settings (TINY), on
    2 gloo processes under DeepSpeed ZeRO-3 (or another ZeRO stage)."""
    return worker_command(CONVERT_WORKER, ["convert", *cli_args(assets, "qwen3", out), *extra], zero_stage=zero_stage)


def zero_conversion(assets, zero_stage: int) -> tuple[Path, str]:  # noqa: F811
    """(output folder, stderr) of one uninterrupted conversion under ZeRO-`zero_stage`."""
    out = assets["root"] / f"zero{zero_stage}-convert"
    command, env = zero3_convert(assets, out, zero_stage=zero_stage)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stderr


@pytest.fixture(scope="module")
def zero3_conversion(assets) -> tuple[Path, str]:  # noqa: F811
    return zero_conversion(assets, 3)


@pytest.mark.parametrize("zero_stage", [3, 2])
def test_zero_conversion_matches_one_process(zero_stage, request, assets, qwen3_conversion):  # noqa: F811
    """Stage 1, the selection, stages 2 and 3 and the export under ZeRO-3 (every weight sharded) and ZeRO-2 (weights
    whole, gradients and optimizer state sharded), each stage started from what the one before saved: the same
    losses, layers and logit-scaling base as one process, and the same exported weights up to the order in which the
    sharded gradients are summed."""
    out, stderr = request.getfixturevalue("zero3_conversion") if zero_stage == 3 else zero_conversion(assets, 2)
    reference_out, reference = qwen3_conversion
    for name in ("stage1", "stage2", "stage3"):  # really DeepSpeed, in both processes
        assert stderr.count(f"{name}: 2 process(es), DEEPSPEED ZeRO-{zero_stage}, mixed precision no,") == 1, \
            stderr[-3000:]
    assert all((out / "stages" / name / "done.json").is_file() for name in STAGES)
    report = json.loads((out / "report.json").read_text())
    assert {(s["processes"], s["distributed"], s["zero_stage"]) for s in report["stages"].values()} == {
        (2, "DEEPSPEED", zero_stage)}
    assert (out / "report.md").read_text().count(f" | 2 (DEEPSPEED, ZeRO-{zero_stage}) |") == 3
    model = check_conversion(out, report)  # every stage trained; the export loads and generates
    assert {p.dtype for p in model.parameters()} == {torch.float32}

    # Each stage starts from what the ZeRO run saved before it. Measured worst relative differences, ZeRO-3 (ZeRO-2):
    # stage 1 1.2e-7 (1.2e-7), stage 3 1.8e-7 (2.7e-7), stage 2 4.8e-6 (4.6e-6; from 1e-7 at its second step: the
    # summation order compounds over 32 steps); rel 5e-5 is 10 times stage 2's.
    for name in ("stage1", "stage2", "stage3"):
        got, expected = report["stages"][name]["losses"], reference["stages"][name]["losses"]
        assert [s for s, _ in got] == [s for s, _ in expected], name
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=5e-5), name
    assert report["selection"]["attention_layers"] == reference["selection"]["attention_layers"]
    assert report["selection"]["scores"] == pytest.approx(reference["selection"]["scores"], rel=1e-5)
    assert report["export"]["logit_scaling_base"] == reference["export"]["logit_scaling_base"]
    assert report["export"]["losses"] == pytest.approx(reference["export"]["losses"], rel=1e-4)

    # The exported weights (stage 3's, gathered from the fp32 masters) within 2% of how far stage 3 moved them
    # (measured: 2.5e-5 of 4.0e-3, 0.6%, under ZeRO-3 and 2.9e-5, 0.7%, under ZeRO-2; stage 2's own differences are
    # 4e-7).
    weights = load_file(out / "model" / "model.safetensors")
    expected = load_file(reference_out / "model" / "model.safetensors")
    before = load_file(reference_out / "stages" / "stage2" / "model" / "model.safetensors")
    assert weights.keys() == expected.keys() and {w.dtype for w in weights.values()} == {torch.float32}
    moved = max((expected[k] - before[k]).abs().max().item() for k in expected)
    worst = max((weights[k] - expected[k]).abs().max().item() for k in expected)
    assert worst <= 2e-2 * moved, (worst, moved)


def test_zero3_conversion_stopped_by_ctrl_c_resumes_to_the_same_export(assets, zero3_conversion):  # noqa: F811
    """Ctrl-C during stage 2 of a ZeRO-3 conversion: both processes stop after the same step with one DeepSpeed
    checkpoint of it; `--resume` skips stage 1 and the selection, continues stage 2 from the checkpoint and ends
    where the uninterrupted ZeRO-3 conversion does, loss for loss and exported weight for weight."""
    reference_out, _ = zero3_conversion
    out = assets["root"] / "zero3-interrupted"
    last, stderr = ctrl_c_in_two_process_stage2(*zero3_convert(assets, out), out)
    assert f"-m hypenet.cli convert --out {out} --resume)" in stderr  # the same launch, with --resume

    command, env = zero3_convert(assets, out, "--resume")
    resumed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage1: already done, skipping" in resumed.stderr and "select: already done" in resumed.stderr
    after = steps_after_resume(out, last)
    uninterrupted = {r["step"]: r["loss"] for r in read_losses(reference_out / "stages" / "stage2")}
    assert [r["loss"] for r in after] == [uninterrupted[r["step"]] for r in after]
    weights = load_file(out / "model" / "model.safetensors")
    for name, weight in load_file(reference_out / "model" / "model.safetensors").items():
        torch.testing.assert_close(weights[name], weight, rtol=0, atol=0)


def test_zero3_conversion_resumed_at_stage3_matches_one_process(assets, qwen3_conversion):  # noqa: F811
    """`--resume` of a conversion whose stages up to stage 2 are done, under ZeRO-3: no stage trained before in this
    run, so stage 3 loads stage 2's model whole and DeepSpeed shards it (an uninterrupted run loads it sharded). From
    the one-process conversion's stage 2, stage 3 and the export end where that conversion's do."""
    reference_out, reference = qwen3_conversion
    out = assets["root"] / "zero3-from-stage2"
    copy_done_stages(reference_out, out, "stage1", "select", "stage2")
    command, env = zero3_convert(assets, out, "--resume")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("stage2: already done, skipping") == 1  # (logged by the main process)
    report = json.loads((out / "report.json").read_text())
    stage3 = report["stages"]["stage3"]
    assert (stage3["processes"], stage3["distributed"], stage3["zero_stage"]) == (2, "DEEPSPEED", 3)
    expected = reference["stages"]["stage3"]["losses"]
    # measured: losses within rel 9e-8, weights within 1.2e-6 (the summation order of the sharded gradients)
    assert [v for _, v in stage3["losses"]] == pytest.approx([v for _, v in expected], rel=1e-6)
    weights = load_file(out / "model" / "model.safetensors")
    for name, weight in load_file(reference_out / "model" / "model.safetensors").items():
        torch.testing.assert_close(weights[name], weight, rtol=1e-4, atol=1e-5)
