"""`hypenet bench-train` on the CPU with tiny shapes: every stage goes through the engine, FLOPs match a hand count
(CPU timings mean nothing; only their presence is checked)."""

import json
import math
import shlex
import sys

import pytest
import torch
from transformers import Qwen3ForCausalLM

from hypenet.bench import HYPENET_SHAPES, hypenet_config, teacher_config
from hypenet.bench.train import TrainBenchSettings, markdown, run
from hypenet.cli import main
from hypenet.halo.config import HaloError
from hypenet.halo.flops import matmul_parameters

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_STAGES = ["--set", "stage1.seq_len=64", "--set", "stage1.batch_size=4",
               "--set", "stage2.seq_len=64", "--set", "stage2.batch_size=4", "--set", "stage2.micro_batch_size=2",
               "--set", "stage3.seq_len=128", "--set", "stage3.batch_size=2", "--set", "stage3.micro_batch_size=1"]


def hand_counts() -> dict[str, int]:
    """Linear-layer parameters of tiny-qwen3 and tiny-hypenet, from their dimensions."""
    t = teacher_config("tiny-qwen3")
    h, q, kv = t.hidden_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    student = hypenet_config("tiny-hypenet")
    assert t.tie_word_embeddings and not t.attention_bias
    assert student.attention_output_gate and student.lightning_output_gate
    mlp = 3 * h * t.intermediate_size
    attention = h * q + 2 * h * kv + q * h  # q, k, v, o
    lightning = 4 * h * q + q * h  # q, k, v (K/V heads repeated to every query head), output gate, o
    head = t.vocab_size * h  # tied: the embedding matrix, counted once, as the head
    body = t.num_hidden_layers * (attention + mlp)
    attention_layers = HYPENET_SHAPES["tiny-hypenet"].attention_layers
    student_params = head + sum(mlp + (attention + q * h if i in attention_layers else lightning)
                                for i in range(t.num_hidden_layers))
    return {"teacher_body": body, "teacher": body + head, "students": t.num_hidden_layers * lightning,
            "student": student_params}


def test_bench_train_runs_every_stage_through_the_engine(tmp_path):
    out = tmp_path / "speed"
    code = main(["bench-train", "tiny-hypenet", "--device", "cpu", "--steps", "3", "--warmup-steps", "2",
                 *TINY_STAGES, "--out", str(out)])
    assert code == 0
    report = json.loads((out / "train_speed.json").read_text())
    assert report["torch"] and report["transformers"] and "fla" in report and report["command"]
    assert report["command"] == shlex.join(sys.orig_argv) and "Attention-score FLOPs" in report["flop_counting"]
    n = hand_counts()
    expected_terms = {
        "stage1": [(2, n["teacher_body"]), (6, n["students"])],
        "stage2": [(2, n["teacher"]), (6, n["student"])],
        "stage3": [(6, n["student"])],
    }
    assert [row["stage"] for row in report["stages"]] == ["stage1", "stage2", "stage3"]
    for row in report["stages"]:
        assert row["status"] == "ok", row
        assert row["tokens_per_s"] > 0 and row["seconds_per_step"] > 0
        terms = [(t["factor"], t["parameters"]) for t in row["flop_terms"]]
        assert terms == expected_terms[row["stage"]]
        assert row["flops_per_token"] == sum(factor * params for factor, params in terms)
        assert row["mfu"] == pytest.approx(row["model_tflops"] / 989.4)
        assert row["model_tflops"] == pytest.approx(row["flops_per_token"] * row["tokens_per_s"] / 1e12)
        # the per-step records are the engine's losses.jsonl: three optimizer steps, finite losses, its token count
        log = row["engine_log"]
        assert [r["step"] for r in log] == [1, 2, 3] and row["timed_steps"] == 1
        assert all(math.isfinite(r["loss"]) and r["seconds"] > 0 for r in log)
        assert [r["tokens"] for r in log] == [s * row["batch_size"] * row["seq_len"] for s in (1, 2, 3)]
        assert row["tokens_per_s"] == pytest.approx(row["batch_size"] * row["seq_len"] / log[2]["seconds"])
    shapes = {r["stage"]: (r["seq_len"], r["batch_size"], r["micro_batch_size"]) for r in report["stages"]}
    assert shapes == {"stage1": (64, 4, 4), "stage2": (64, 4, 2), "stage3": (128, 2, 1)}
    table = (out / "train_speed.md").read_text().strip().splitlines()
    assert table[0].startswith("# hypenet bench-train") and table[-1].startswith("| stage3 | 128 | 2 (1) |")


def test_matmul_parameters_count_an_untied_head_and_skip_the_embedding():
    config = teacher_config("tiny-qwen3")
    config.tie_word_embeddings = False
    model = Qwen3ForCausalLM(config)
    n = hand_counts()
    assert matmul_parameters(model) == n["teacher"]
    assert matmul_parameters(model.model) == n["teacher_body"]


def test_unknown_stage_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(HaloError, match=r"unknown stage 'stage4'; stages are: stage1, stage2, stage3"):
        run(TrainBenchSettings(shape="tiny-hypenet", stages=["stage1", "stage4"], device="cpu", out=tmp_path))
    assert main(["bench-train", "tiny-hypenet", "--device", "cpu", "--stages", "stage2,distill",
                 "--out", str(tmp_path)]) == 2
    assert "unknown stage 'distill'" in capsys.readouterr().err
    assert not (tmp_path / "train_speed.json").exists()


def test_profile_records_the_last_step_and_leaves_it_out_of_the_median(tmp_path):
    out = tmp_path / "speed"
    code = main(["bench-train", "tiny-hypenet", "--device", "cpu", "--stages", "stage2", "--steps", "3",
                 "--warmup-steps", "1", "--profile", *TINY_STAGES, "--out", str(out)])
    assert code == 0
    row = json.loads((out / "train_speed.json").read_text())["stages"][0]
    log = row["engine_log"]
    assert row["timed_steps"] == 1 and row["seconds_per_step"] == log[1]["seconds"]  # step 3 was profiled
    profile = row["profile"]
    assert profile["step"] == 3 and profile["wall_s"] > 0 and profile["table"] == "profile_stage2.txt"
    assert profile["gpu_kernel_s"] is None and profile["gpu_kernel_s_by_kind"] == {}  # no GPU here
    table = (out / "profile_stage2.txt").read_text()
    assert table.startswith("optimizer step 3, sorted by self_cpu_time_total") and "aten::mm" in table
    assert "stage2, step 3 under the profiler (profile_stage2.txt)" in (out / "train_speed.md").read_text()


def test_profile_needs_a_step_beyond_the_timed_ones():
    settings = TrainBenchSettings(shape="tiny-hypenet", device="cpu", steps=3, warmup_steps=2, profile=True)
    with pytest.raises(HaloError, match=r"--profile needs --steps >= --warmup-steps \+ 2 \(got 3 and 2\)"):
        run(settings)


@pytest.mark.parametrize("name, kind", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_TNT", "matmul"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>",
     "softmax attention (flash, cuDNN)"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::BinaryFunctor<float>>",
     "elementwise / reduction (PyTorch)"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float>>", "elementwise / reduction (PyTorch)"),
    ("chunk_simple_gla_fwd_kernel_o", "other Triton (fla)"),
    ("triton_poi_fused_add_mul_0", "compiled (Inductor)"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_1", "compiled (Inductor)"),
    ("split_kv_kernel", "hypenet decode kernels (split-KV attention, lightning step)"),
    ("lightning_step_kernel", "hypenet decode kernels (split-KV attention, lightning step)"),
    ("gemv_kernel", "hypenet matrix-vector (gemv)"),
    ("gemv_fused_kernel", "hypenet matrix-vector (gemv)"),
    ("Memcpy DtoD (Device -> Device)", "copy / memset"),
])
def test_kernel_kinds_by_name(name, kind):
    from hypenet.bench.profile import kernel_kind
    assert kernel_kind(name) == kind


def test_kernel_time_counts_each_kernel_once():
    """The operators that launch kernels and the step's annotation carry the same time again: only kernels count."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from hypenet.bench.profile import kernel_seconds_by_kind

    def event(name, us, device=DeviceType.CUDA, annotation=False):
        span = SimpleNamespace(elapsed_us=lambda: us)
        return SimpleNamespace(name=name, device_type=device, is_user_annotation=annotation, time_range=span)

    events = [event("ProfilerStep#6", 900.0, annotation=True),  # the step's annotation on the GPU timeline
              event("aten::mm", 400.0, device=DeviceType.CPU),  # the operator (host side)
              event("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_TNT", 300.0),
              event("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NNT", 100.0),
              event("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", 50.0),
              event("chunk_simple_gla_fwd_kernel_o", 25.0)]
    kinds = kernel_seconds_by_kind(events)
    assert list(kinds) == ["matmul", "elementwise / reduction (PyTorch)", "other Triton (fla)"]
    assert list(kinds.values()) == pytest.approx([400e-6, 50e-6, 25e-6], rel=1e-12)

    # the decode profile's per-call numbers (hypenet bench --profile): the same events seen over 5 calls of 0.2 ms
    from hypenet.bench.profile import per_call_summary

    summary = per_call_summary(events, calls=5, wall_s=1e-3)
    assert summary["kernels_per_call"] == pytest.approx(4 / 5)
    assert summary["gpu_busy_ms"] == pytest.approx(0.095)
    assert summary["uncovered_ms"] == pytest.approx(1.0 - 0.095)
    assert summary["gpu_ms_by_kind"] == pytest.approx({"matmul": 0.08, "elementwise / reduction (PyTorch)": 0.01,
                                                       "other Triton (fla)": 0.005})
    assert per_call_summary(None, calls=5, wall_s=1e-3)["gpu_busy_ms"] is None


def test_compile_is_recorded_and_the_stages_train(tmp_path, monkeypatch):
    """`--set compile=true` goes through the engine (aot_eager here: the tracing without code generation)."""
    from hypenet.halo import compiling
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    out = tmp_path / "speed"
    code = main(["bench-train", "tiny-hypenet", "--device", "cpu", "--stages", "stage2,stage3", "--steps", "2",
                 "--warmup-steps", "1", "--set", "compile=true", *TINY_STAGES, "--out", str(out)])
    assert code == 0
    report = json.loads((out / "train_speed.json").read_text())
    assert report["compile"] is True and [r["status"] for r in report["stages"]] == ["ok", "ok"]
    assert "torch.compile in stages 2-3 (each decoder layer, the loss)" in (out / "train_speed.md").read_text()


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("Triton Error [CUDA]: out of memory")], ids=["torch", "triton"])
def test_an_out_of_memory_back_off_is_reported_with_the_micro_batch_it_ended_at(tmp_path, monkeypatch, error):
    """With the micro batch unset, the engine halves it when a step runs out of memory (tested in
    test_halo_engine.py); the benchmark reports the micro batch it went on with and leaves the retried step out of the
    median. Here a forward of more than 2 sequences "runs out of memory", as torch or a Triton kernel says it."""
    from hypenet.halo import engine

    real = engine._accumulated_loss

    def limited(acc, model, batch, micro, accumulation):
        if micro > 2:
            raise error
        return real(acc, model, batch, micro, accumulation)

    monkeypatch.setattr(engine, "_accumulated_loss", limited)
    out = tmp_path / "speed"
    code = main(["bench-train", "tiny-hypenet", "--device", "cpu", "--stages", "stage2", "--steps", "3",
                 "--warmup-steps", "1", *TINY_STAGES, "--set", "stage2.batch_size=8", "--set",
                 "stage2.micro_batch_size=null", "--out", str(out)])  # (the last setting of a key wins)
    assert code == 0
    row = json.loads((out / "train_speed.json").read_text())["stages"][0]
    assert row["status"] == "ok" and row["batch_size"] == 8
    assert row["first_micro_batch_size"] == 8 and row["micro_batch_size"] == 2
    assert row["micro_batch_changes"] == [{"step": 1, "micro_batch_size": 4}, {"step": 1, "micro_batch_size": 2}]
    log = row["engine_log"]
    assert row["timed_steps"] == 2 and row["seconds_per_step"] == pytest.approx(
        (log[1]["seconds"] + log[2]["seconds"]) / 2)
    assert "| stage2 | 64 | 8 (8 → 4 → 2: out of memory at step 1) |" in (out / "train_speed.md").read_text()


def test_a_back_off_inside_the_timed_steps_says_so():
    import dataclasses

    from hypenet.bench.train import stage_row
    from hypenet.halo.config import load_config

    settings = TrainBenchSettings(shape="tiny-hypenet", device="cpu", steps=2, warmup_steps=1)
    config = dataclasses.replace(load_config().stage2, batch_size=8, seq_len=64, micro_batch_size=None)
    log = [{"step": 1, "loss": 1.0, "tokens": 512, "seconds": 1.0},
           {"step": 2, "loss": 0.9, "tokens": 1024, "seconds": 3.0}]
    row = stage_row("stage2", config, [("student", 6, 10)], log, settings, 1, None,
                    [{"step": 2, "micro_batch_size": 4}])
    assert row["status"] == "ok (the timed steps include an out-of-memory retry: time more --steps)"
    assert row["seconds_per_step"] == 3.0 and row["micro_batch_size"] == 4 and row["first_micro_batch_size"] == 8


def test_a_cpu_bench_train_report_has_no_empty_peak_memory_column(tmp_path):
    """No allocator peak on a CPU: train_speed.md leaves the "peak GiB" column out and says why once (it was a column
    of empty cells); train_speed.json keeps null (not measured). A GPU report keeps the column."""
    out = tmp_path / "speed"
    assert main(["bench-train", "tiny-hypenet", "--device", "cpu", "--stages", "stage3", "--steps", "2",
                 "--warmup-steps", "1", *TINY_STAGES, "--out", str(out)]) == 0
    report = json.loads((out / "train_speed.json").read_text())
    (row,) = report["stages"]
    assert row["status"] == "ok" and row["peak_mem_gib"] is None and report["units"]["*_gib"] == "GiB (2**30 bytes)"

    def table(text: str) -> tuple[list[str], list[str]]:
        header, _, last = text.strip().splitlines()[-3:]
        return ([cell.strip() for cell in line.strip().strip("|").split("|")] for line in (header, last))

    text = (out / "train_speed.md").read_text()
    header, cells = table(text)
    assert "peak GiB" not in header and len(cells) == len(header) and all(cells), dict(zip(header, cells))
    assert text.count("no peak-memory column") == 1 and "the device here is cpu" in text
    gpu = markdown({**report, "device": "cuda:0", "stages": [{**row, "peak_mem_gib": 3.5}]})
    header, cells = table(gpu)
    assert cells[header.index("peak GiB")] == "3.5" and "no peak-memory column" not in gpu
