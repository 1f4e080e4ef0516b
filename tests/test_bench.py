"""`hypenet bench` on the CPU with tiny shapes (the runner, its report and its arithmetic; CPU timings mean nothing)."""

import json
import re

import pytest
import torch

from hypenet.bench import fill_synthetic, hypenet_config
from hypenet.bench.cli import main
from hypenet.bench.measure import cache_bytes, decode_floor, weight_bytes_per_step
from hypenet.bench.report import issue_targets, render_markdown
from hypenet.bench.shapes import random_model
from hypenet.errors import InvalidInputError
from hypenet.fast import FastHypeNet
from hypenet.model import HypeNetForCausalLM
from hypenet.units import tokens

pytestmark = pytest.mark.usefixtures("one_thread")


ROW_KEYS = {"model", "shape", "engine", "kind", "batch_size", "context_len", "status", "ms_per_token",
            "tokens_per_s", "peak_mem_gib", "floor_ms", "ratio_to_floor", "bytes_per_step_gib", "kv_state_gib"}


def test_bench_end_to_end_on_cpu(tmp_path):
    code = main(["tiny-hypenet", "tiny-qwen3", "--device", "cpu", "--dtype", "fp32", "--contexts", "40,64",
                 "--prefill-contexts", "64", "--teacher-prefill-contexts", "64", "--transformers-contexts", "40",
                 "--batch-sizes", "1,2",
                 "--decode-tokens", "2", "--warmup-tokens", "1", "--prefill-chunk", "40", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["bandwidth_gbps"] > 0 and report["command"] and report["torch"]
    rows = report["results"]
    assert {(r["shape"], r["engine"], r["batch_size"], r["context_len"]) for r in rows} == {
        *((shape, "fast", batch, context) for shape in ("tiny-hypenet", "tiny-qwen3") for batch in (1, 2)
          for context in (40, 64)),
        ("tiny-qwen3", "transformers", 1, 40), ("tiny-qwen3", "transformers", 2, 40),
    }
    for row in rows:
        assert row["status"] == "ok", row
        assert ROW_KEYS <= row.keys()
        assert row["ratio_to_floor"] == pytest.approx(row["ms_per_token"] / row["floor_ms"])
        assert row["tokens_per_s"] == pytest.approx(1000 * row["batch_size"] / row["ms_per_token"])
    prefilled = [r for r in rows if r["engine"] == "fast" and r["context_len"] == 64]
    assert all(r["prefill_s"] > 0 for r in prefilled)
    assert all(r["prefill_s"] > 0 for r in rows if r["engine"] == "transformers")
    assert (tmp_path / "bench.md").read_text().startswith("# hypenet bench")
    assert (tmp_path / "bench_decode.png").stat().st_size > 0


def test_a_small_cpu_bench_measures_everything_at_its_contexts_in_fp32(tmp_path):
    """`hypenet bench MODEL TEACHER --device cpu --contexts 40,64`: no list left at the GPU's 128K-1M (the transformers
    teacher ran at 128K on a CPU, for over ten minutes) and fp32, not bf16."""
    assert main(["tiny-hypenet", "tiny-qwen3", "--device", "cpu", "--contexts", "40,64", "--decode-tokens", "2",
                 "--warmup-tokens", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    settings = report["settings"]
    assert settings["dtype"] == "fp32"
    assert settings["prefill_contexts"] == settings["teacher_prefill_contexts"] == \
        settings["transformers_contexts"] == [40, 64]
    assert {(r["shape"], r["engine"], r["context_len"], r["status"]) for r in report["results"]} == {
        *((shape, "fast", context, "ok") for shape in ("tiny-hypenet", "tiny-qwen3") for context in (40, 64)),
        ("tiny-qwen3", "transformers", 40, "ok"), ("tiny-qwen3", "transformers", 64, "ok")}


def test_unset_context_lists_are_the_gpu_defaults_within_the_range_of_contexts():
    from hypenet.bench.cli import DEFAULT_PREFILL, DEFAULT_TRANSFORMERS, within_contexts

    everything = tokens("32K,128K,512K,1M")  # the default run is as it was
    assert within_contexts(None, DEFAULT_PREFILL, everything) == tokens("128K,512K,1M")
    assert within_contexts(None, DEFAULT_TRANSFORMERS, everything) == tokens("128K,512K")
    assert within_contexts(None, DEFAULT_TRANSFORMERS, tokens("32K,128K")) == tokens("128K")  # not 512K
    assert within_contexts(None, DEFAULT_PREFILL, tokens("2K,1K")) == tokens("1K,2K")
    assert within_contexts([], DEFAULT_PREFILL, tokens("1K")) == []  # '' is none


def test_bench_profile_and_inline_recurrence_on_cpu(tmp_path):
    """--profile: a few decode steps per case under torch.profiler (the table file, the summary in bench.json and
    bench.md); --no-fused-lightning-step: the engine decodes with the inline recurrence."""
    code = main(["tiny-hypenet", "--device", "cpu", "--dtype", "fp32", "--contexts", "40", "--prefill-contexts", "",
                 "--transformers-contexts", "", "--decode-tokens", "2", "--warmup-tokens", "1", "--profile",
                 "--no-fused-lightning-step", "--max-autotune", "--gemv", "triton", "--gemv-fusion",
                 "--pdl", "off", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["settings"]["fused_lightning_step"] is False and report["settings"]["max_autotune"] is True
    assert report["settings"]["gemv"] == "triton" and report["settings"]["gemv_fusion"] == "norm,swiglu,residual"
    assert report["settings"]["pdl"] is False
    (row,) = report["results"]
    assert row["pdl"] is False  # what the engine did
    profile = row["profile"]
    assert profile["calls"] == 5 and profile["wall_ms"] > 0 and profile["table"] == "profile_tiny-hypenet_b1_40.txt"
    assert profile["gpu_busy_ms"] is None and profile["kernels_per_call"] is None  # no GPU: host time only
    assert "aten::" in (tmp_path / profile["table"]).read_text()
    markdown = (tmp_path / "bench.md").read_text()
    assert "## Decode step profile" in markdown and "profile_tiny-hypenet_b1_40.txt" in markdown


def test_profile_plot_from_gpu_rows(tmp_path):
    from hypenet.bench.report import write_report

    profile = {"calls": 5, "wall_ms": 3.4, "gpu_busy_ms": 2.6, "kernels_per_call": 377.0, "uncovered_ms": 0.8,
               "gpu_ms_by_kind": {"matmul": 1.34, "compiled (Inductor)": 0.28}, "table": "t.txt"}
    row = {"model": "m (fast)", "shape": "m", "engine": "fast", "kind": "hypenet", "batch_size": 1,
           "context_len": 131072, "status": "ok", "ms_per_token": 2.73, "floor_ms": 1.78, "ratio_to_floor": 1.53,
           "profile": profile}
    write_report({"results": [row]}, tmp_path)
    assert (tmp_path / "bench_profile.png").stat().st_size > 0
    assert "![where a decode step's time goes](bench_profile.png)" in (tmp_path / "bench.md").read_text()
    # CPU rows (no GPU kernels) draw no profile plot
    write_report({"results": [{**row, "profile": {**profile, "gpu_busy_ms": None}}]}, tmp_path / "cpu")
    assert not (tmp_path / "cpu" / "bench_profile.png").exists()


def test_profile_lines_show_kernel_time_by_kind():
    from hypenet.bench.report import profile_lines

    row = {"model": "m (fast)", "batch_size": 1, "context_len": 131072, "profile": {
        "calls": 5, "wall_ms": 2.8, "gpu_busy_ms": 2.1, "kernels_per_call": 310.0, "uncovered_ms": 0.7,
        "gpu_ms_by_kind": {"matmul": 1.2, "compiled (Inductor)": 0.9}, "table": "t.txt"}}
    lines = profile_lines([row, {"model": "other", "status": "ok"}])
    assert lines[5].endswith("| matmul ms | compiled (Inductor) ms | table |")
    assert lines[7] == "| m (fast) | 1 | 128K | 310 | 2.800 | 2.100 | 0.700 | 1.200 | 0.900 | t.txt |"
    assert len(lines) == 8 and profile_lines([{"model": "x"}]) == []


def test_tokens_parser():
    assert tokens("32K,128k,1M,100") == [32768, 131072, 1048576, 100]
    assert tokens("") == []


def test_named_shapes_follow_the_spec():
    config = hypenet_config("hypenet-2b")
    assert config.attention_layers == [2, 3, 6, 8, 9, 21, 25]
    assert config.attention_logit_scaling_base == 500 and not config.attention_rope
    assert config.num_hidden_layers == 28 and config.hidden_size == 2048 and config.vocab_size == 151936
    teacher = hypenet_config("qwen3-1.7b")
    assert teacher.attention_layers == list(range(28)) and teacher.attention_rope
    assert not teacher.attention_output_gate and teacher.attention_logit_scaling_base is None
    with torch.device("meta"):
        params = sum(p.numel() for p in HypeNetForCausalLM(config).parameters())
    assert params == pytest.approx(1.93e9, rel=0.01)  # SPEC 2.3
    assert hypenet_config("hypenet-9b").attention_layers == [1, 2, 4, 6, 7, 10, 24, 33, 34]
    with torch.device("meta"):  # the embedded teacher and its converted student (results/gpu_convert: 134.5M, 154.7M)
        small = [sum(p.numel() for p in HypeNetForCausalLM(hypenet_config(name)).parameters())
                 for name in ("smollm2-135m", "hypenet-smollm2")]
    assert small == [pytest.approx(134.5e6, rel=1e-3), pytest.approx(154.7e6, rel=1e-3)]
    with pytest.raises(ValueError, match="named shapes"):
        hypenet_config("qwen3-70b")


def test_floor_counts_weights_kv_cache_and_states():
    config = hypenet_config("hypenet-2b")
    cache = cache_bytes(config, batch=1, context=131072, dtype=torch.bfloat16)
    assert cache["kv"] == 7 * 2 * 8 * 128 * 2 * 131072  # SPEC: 28 KB per token
    assert cache["state"] == 21 * 16 * 128 * 128 * 4
    model = random_model(hypenet_config("tiny-hypenet"), "cpu", torch.bfloat16)
    weights = weight_bytes_per_step(model, batch=1)
    assert weights == 2 * sum(p.numel() for p in model.parameters())  # tied embeddings: lm_head reads them all
    floor = decode_floor(model, 1, 100, bandwidth=1e9)
    total = weights + sum(cache_bytes(model.config, 1, 100, torch.bfloat16).values())
    assert floor["floor_ms"] == pytest.approx(1000 * total / 1e9)
    # bytes in GiB (2**30), as every memory figure of the benchmark; only the bandwidth is in (decimal) GB/s
    assert floor["bytes_per_step_gib"] == pytest.approx(total / 2**30)
    assert floor["weights_gib"] == pytest.approx(weights / 2**30)
    assert not [key for key in floor if key.endswith("_gb")]


def test_synthetic_cache_fills_only_the_context():
    model = random_model(hypenet_config("tiny-hypenet"), "cpu", torch.float32)
    engine = FastHypeNet(model, max_batch=2, max_len=32)
    fill_synthetic(engine, batch=1, context=20)
    keys = next(layer.keys for layer in engine.cache.layers if layer.keys is not None)
    assert keys[0, :, :20].abs().sum() > 0 and keys[0, :, 20:].abs().sum() == 0 and keys[1].abs().sum() == 0
    assert engine.length == 20
    assert torch.isfinite(engine.decode(torch.tensor([3]))).all()


def test_issue_targets_from_rows():
    def row(shape, engine, kind, context, ms, floor=None, prefill=None):
        return dict(shape=shape, engine=engine, kind=kind, batch_size=1, context_len=context, status="ok",
                    ms_per_token=ms, floor_ms=floor or ms, ratio_to_floor=ms / (floor or ms), prefill_s=prefill)

    rows = [row("h", "fast", "hypenet", 131072, 2.0, floor=1.8, prefill=3.0),
            row("h", "fast", "hypenet", 524288, 5.0, floor=4.4, prefill=18.0),
            row("t", "fast", "teacher", 524288, 16.0),
            row("t", "transformers", "teacher", 131072, 69.0, prefill=4.7),
            row("t", "transformers", "teacher", 524288, 102.0, prefill=66.0)]
    targets = {t["target"]: t for t in issue_targets(rows)}
    assert targets["h decode at 128K: time per token / floor"]["met"]
    assert targets["decode at 128K: t (transformers generate) / h"]["value"] == "34.5x"
    assert targets["decode at 512K: t (our engine) / h"]["met"]
    assert targets["prefill at 512K: t (transformers) / h"]["met"]  # 66 / 18 = 3.67


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_bench_without_a_gpu_says_to_pass_device_cpu(tmp_path):
    with pytest.raises(InvalidInputError, match="none is visible; pass --device cpu"):
        main(["tiny-hypenet", "--out", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("option, value, said", [
    ("--contexts", "0", "comma list of positive counts"),
    ("--batch-sizes", "1,0", "comma list of positive counts"),
    ("--decode-tokens", "0", "a positive whole number"),
    ("--prefill-chunk", "-8", "a positive whole number"),
    ("--warmup-tokens", "-1", "a whole number >= 0"),
    ("--time-budget-s", "0", "a number > 0"),
])
def test_bench_refuses_options_that_cannot_work_before_anything_runs(tmp_path, capsys, option, value, said):
    with pytest.raises(SystemExit) as stop:
        main(["tiny-hypenet", "--device", "cpu", option, value, "--out", str(tmp_path / "out")])
    assert stop.value.code == 2 and f"argument {option}: {said}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("error, status", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB"), "does not fit: out of memory"),
    (RuntimeError("Triton Error [CUDA]: out of memory"), "does not fit: out of memory"),  # a Triton kernel's
    (RuntimeError("illegal memory access"), "error: RuntimeError"),
], ids=["torch", "triton", "other"])
def test_a_case_that_runs_out_of_memory_does_not_fit(tmp_path, error, status):
    from hypenet.bench.run import Bench, BenchSettings

    bench = Bench(BenchSettings(models=["tiny-hypenet"], contexts=[40], device="cpu", dtype="fp32", out=tmp_path))

    def case():
        raise error

    bench.guarded(row := {"model": "tiny-hypenet", "context_len": 40}, case, estimate_s=0.0)
    assert row["status"] == status and row["error"] == str(error) and bench.results == [row]


def test_the_time_budget_guesses_at_the_device_measured_speed(tmp_path, monkeypatch):
    """The time budget's guess of a prefill scales the assumed H200 rates down by the device's measured matmul rate,
    so that a slow device (here one of 1 GFLOP/s) skips a 64K prefill it would spend far longer on than the budget,
    where the H200 rates guessed it at 2 s and ran it."""
    from hypenet.bench import measure
    from hypenet.bench.run import Bench, BenchSettings

    bench = Bench(BenchSettings(models=["tiny-hypenet"], contexts=[1024, 65536], prefill_contexts=[65536],
                                device="cpu", dtype="fp32", out=tmp_path, time_budget_s=100))
    config = hypenet_config("tiny-hypenet")
    at_h200_rates = bench.prefill_estimate(config, 1, 65536)
    monkeypatch.setattr(measure, "matmul_flops", lambda device, dtype: 1e9)
    bench.run()
    assert bench.meta["matmul_tflops"] == 1e-3
    assert bench.prefill_estimate(config, 1, 65536) - 2 == pytest.approx(5e5 * (at_h200_rates - 2))
    status = {row["context_len"]: row["status"] for row in bench.results}
    assert status[1024] == "ok" and status[65536].startswith("skipped: time budget (needs ~")


def test_a_misspelt_shape_names_the_one_meant(tmp_path, capsys):
    from hypenet.cli import main as hypenet

    assert hypenet(["bench", "tiny-hypnet", "--device", "cpu", "--out", str(tmp_path / "b")]) == 2
    assert "tiny-hypnet is neither a named shape nor a local model; did you mean tiny-hypenet?" in \
        capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_model_is_named_as_hypenet_eval_names_it(tmp_path):
    """A conversion's RUN/model is RUN (not "model"), a hub id keeps its whole last part (not "Qwen3-1")."""
    from hypenet.bench.run import ModelSource

    random_model(hypenet_config("tiny-hypenet"), torch.device("cpu"), torch.float32).save_pretrained(
        tmp_path / "run-a" / "model")
    cpu = torch.device("cpu")
    converted = ModelSource(str(tmp_path / "run-a" / "model"), cpu, torch.float32)
    assert (converted.label, converted.is_teacher) == ("run-a", False)
    assert ModelSource("Qwen/Qwen3-1.7B", cpu, torch.float32).label == "Qwen3-1.7B"


def results_table(markdown: str) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of bench.md's "## Results" table, cell by cell."""
    lines = markdown.split("## Results\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    header, _, *rows = ([cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines)
    return header, rows


def test_a_cpu_bench_report_has_no_empty_peak_memory_column(tmp_path):
    """On a CPU there is no allocator peak to measure (torch.cuda's only): bench.md leaves the column out and says
    why once, instead of a "peak GiB" column of empty cells; bench.json keeps null (not measured), never a number.
    Memory is in GiB throughout; the bandwidth alone is in GB/s, said to be decimal."""
    assert main(["tiny-hypenet", "--device", "cpu", "--contexts", "40", "--transformers-contexts", "",
                 "--decode-tokens", "1", "--warmup-tokens", "0", "--out", str(tmp_path)]) == 0
    markdown = (tmp_path / "bench.md").read_text()
    header, rows = results_table(markdown)
    assert not [column for column in header if "peak" in column]
    assert len(rows) == 1 and all(len(row) == len(header) for row in rows)
    empty = [column for i, column in enumerate(header) if all(not row[i] for row in rows)]
    assert empty == [], f"columns with no value in any row: {empty}"
    assert markdown.count("no peak-memory column") == 1 and "the device here is cpu" in markdown
    assert "GB/s (10^9 bytes/s)" in markdown and "GiB (2^30 bytes)" in markdown
    assert not re.search(r"\bGB\b(?!/s)", markdown)  # GB only as the bandwidth's GB/s
    report = json.loads((tmp_path / "bench.json").read_text())
    (row,) = report["results"]
    assert row["status"] == "ok" and row["peak_mem_gib"] is None and row["prefill_peak_mem_gib"] is None
    assert not [key for key in row if key.endswith("_gb")]
    assert row["bytes_per_step_gib"] == pytest.approx(
        row["weights_gib"] + row["kv_gib"] + row["state_gib"]) and row["kv_state_gib"] == pytest.approx(
        row["kv_gib"] + row["state_gib"])
    assert report["units"]["*_gib"] == "GiB (2**30 bytes)" and "10**9" in report["units"]["bandwidth_gbps"]


def test_a_gpu_report_keeps_its_peak_memory_and_a_cpu_one_says_why_not():
    row = {"model": "h (fast)", "shape": "h", "engine": "fast", "kind": "hypenet", "batch_size": 1,
           "context_len": 1048576, "status": "ok", "prefill_s": 40.0, "ms_per_token": 2.0, "floor_ms": 1.8,
           "ratio_to_floor": 1.11, "peak_mem_gib": 43.5, "prefill_peak_mem_gib": 43.1, "kv_state_gib": 1.0}
    gpu = render_markdown({"device": "cuda:0", "results": [row]}, None)
    header, rows = results_table(gpu)
    assert "peak GiB" in header and rows[0][header.index("peak GiB")] == "43.5"
    assert "no peak-memory column" not in gpu and "peak 43.1 GiB" in gpu  # the 1M prefill target
    unmeasured = {**row, "peak_mem_gib": None, "prefill_peak_mem_gib": None}
    cpu = render_markdown({"device": "cpu", "results": [unmeasured]}, None)
    assert "peak GiB" not in results_table(cpu)[0] and cpu.count("no peak-memory column") == 1
    (target,) = [t for t in issue_targets([unmeasured]) if "prefill of 1M" in t["target"]]
    assert target["value"] == "40.0 s"  # no peak: none measured (it said "peak 0.0 GiB")
