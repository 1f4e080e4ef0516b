"""HALO end to end on tiny random teachers (CPU): stage losses go down, the export loads and generates, a killed
conversion resumes to the same weights, two gloo processes match one, and bad input fails clearly without loss."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from hypenet.cli import main
from hypenet.eval.models import load_model_for_eval
from hypenet.halo import pipeline
from hypenet.halo.config import HaloError, load_config, read_config, resolve
from hypenet.halo.pipeline import convert, run_stages
from hypenet.halo.stage1 import LayerAlignment

WORDS = ("the a cat dog bird fish sees eats likes finds small big red blue green happy quick slow tree river "
         "house").split()

# Small enough for CI: 4 layers of width 64, sequences of 64 tokens (256 in stage 3).
TINY = [
    "checkpoint_every=5",
    "stage1.tokens=4096", "stage1.seq_len=64", "stage1.batch_size=4",
    "select.recall_samples=2", "select.recall_context=256", "select.commonsense_tokens=256",
    "stage2.tokens=8192", "stage2.seq_len=64", "stage2.batch_size=4", "stage2.lr=1e-3",
    "stage3.tokens=2048", "stage3.seq_len=256", "stage3.batch_size=2", "stage3.lr=1e-3",
]


def make_documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))).capitalize() + "."
            for _ in range(rng.randint(3, 12))
        )
        for _ in range(n)
    ]


def write_jsonl(path: Path, documents: list[str]) -> Path:
    """A .jsonl data source: one {"text": document} per line."""
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    return path


def make_tokenizer(documents: list[str], vocab_size: int = 300) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(documents, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def make_teacher(path: Path, family: str, tokenizer) -> Path:
    """A random 4-layer teacher of `family` with GQA, saved with its tokenizer as a HF checkpoint folder."""
    common = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(0)
    if family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=16, tie_word_embeddings=True, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **common))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("halo")
    documents = make_documents(300)
    data = write_jsonl(root / "data.jsonl", documents)
    tokenizer = make_tokenizer(documents)
    return {
        "root": root,
        "data": data,
        "qwen3": make_teacher(root / "qwen3", "qwen3", tokenizer),
        "llama": make_teacher(root / "llama", "llama", tokenizer),
    }


def tiny_config(assets, family: str, out: Path, *extra: str):
    return load_config("smoke", overrides=TINY + list(extra), teacher=str(assets[family]), out=str(out),
                       data={"source": str(assets["data"])})


def cli_args(assets, family: str, out: Path) -> list[str]:
    args = ["--preset", "smoke", "--teacher", str(assets[family]), "--data", str(assets["data"]), "--out", str(out)]
    return args + [a for override in TINY for a in ("--set", override)]


def wait_for_stage2_steps(process: subprocess.Popen, out: Path, steps: int = 2) -> None:
    """Until the conversion running in `process` has logged `steps` stage-2 steps under `out` (at most 4 minutes)."""
    log = out / "stages" / "stage2" / "losses.jsonl"
    deadline = time.monotonic() + 240
    while not (log.is_file() and len(log.read_text().splitlines()) >= steps):
        assert process.poll() is None, f"the run ended before stage 2 trained: {process.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "stage 2 did not train within 4 minutes"
        time.sleep(0.01)


def read_losses(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "losses.jsonl").read_text().splitlines()]


def ctrl_c_in_two_process_stage2(command: list[str], env: dict, out: Path) -> tuple[int, str]:
    """Start `command` (a 2-process run writing into `out`) as a terminal's foreground job, a process group of its
    own, and press Ctrl-C once stage 2 has trained 2 steps: SIGINT to the launcher and both workers. Both workers
    must stop after the same step, with one checkpoint of it. Returns (that step, the run's stderr)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    wait_for_stage2_steps(process, out)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0, stderr[-3000:]
    last = read_losses(out / "stages" / "stage2")[-1]["step"]
    assert last < 32, "stage 2 finished before the signal"
    assert stderr.count(f"stage2: stopped by signal after step {last};") == 2, stderr[-3000:]  # both, at that step
    hint = re.findall(r"interrupted; continue with the same launch on 2 processes and --resume \(e\.g\. accelerate "
                      rf"launch \.\.\. -m hypenet\.cli (\w+) --out {re.escape(str(out))} --resume\)", stderr)
    assert len(hint) == 1, stderr[-3000:]  # once, by the main process, naming the command (stage2, or convert)
    assert [p.name for p in (out / "stages" / "stage2" / "checkpoints").iterdir()] == [f"step-{last:08d}"]
    return last, stderr


def steps_after_resume(out: Path, resumed_from: int) -> list[dict]:
    """Stage 2's loss records after its one resume, which must be from step `resumed_from` and train the rest."""
    records = read_losses(out / "stages" / "stage2")
    (resume_at,) = [i for i, r in enumerate(records) if r.get("event") == "resume"]
    assert records[resume_at]["step"] == resumed_from
    after = records[resume_at + 1:]
    assert [r["step"] for r in after] == list(range(resumed_from + 1, 33))
    return after


@pytest.fixture(scope="module")
def qwen3_conversion(assets):
    """One uninterrupted conversion of the tiny Qwen3, shared by the tests that compare against it."""
    out = assets["root"] / "qwen3-out"
    report = convert(tiny_config(assets, "qwen3", out))
    return out, report


def check_conversion(out: Path, report: dict):
    """Every stage trained and is reported; the exported model loads and generates (returned)."""
    stages = report["stages"]
    assert list(stages) == ["stage1", "stage2", "stage3"]
    for name, stage in stages.items():
        assert stage["final_loss"] < stage["initial_loss"], (name, stage)
    assert len(report["selection"]["attention_layers"]) == 1  # floor(4 layers / 4)
    assert report["export"]["logit_scaling_base"] is not None
    assert json.loads((out / "report.json").read_text())["tokens"] == 4096 + 8192 + 2048
    assert (out / "report.md").is_file()

    model = AutoModelForCausalLM.from_pretrained(out / "model", trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.mixer_types.count("attention") == 1
    assert model.config.attention_logit_scaling_base is not None
    inputs = tokenizer("The cat sees a", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 5
    # the models before the export (no logit scaling) come with the tokenizer too: each folder loads as it is
    for stage in ("stage2", "stage3"):
        before, its_tokenizer = load_model_for_eval(out / "stages" / stage / "model", "cpu")
        assert before.config.attention_logit_scaling_base is None
        assert its_tokenizer.get_vocab() == tokenizer.get_vocab()
    return model


def test_convert_tiny_qwen3(qwen3_conversion):
    out, report = qwen3_conversion
    check_conversion(out, report)
    # how each stage ran, in the report and its table
    assert {(s["processes"], s["distributed"]) for s in report["stages"].values()} == {(1, "NO")}
    assert not any("zero_stage" in s for s in report["stages"].values())  # only under DeepSpeed
    # one process, not distributed: "1"; each stage ran once
    assert {s["runs"] for s in [*report["stages"].values(), report["selection"], report["export"]]} == {1}
    table = [line for line in (out / "report.md").read_text().splitlines() if re.match(r"\| stage\d ", line)]
    assert [line.split(" | ")[4:8:3] for line in table] == [["1", "1"]] * 3  # runs, processes


def test_convert_tiny_llama(assets):
    out = assets["root"] / "llama-out"
    check_conversion(out, convert(tiny_config(assets, "llama", out)))


def test_convert_with_compile_gives_the_eager_conversion(assets, qwen3_conversion, tmp_path, monkeypatch):
    """`compile: true` through the whole pipeline (aot_eager: dynamo's tracing and AOT autograd, no code generation):
    the same losses and the same exported weights as the eager conversion."""
    from hypenet.halo import compiling
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    reference_out, reference = qwen3_conversion
    report = convert(tiny_config(assets, "qwen3", tmp_path / "compiled", "compile=true"))
    for name in ("stage2", "stage3"):
        got, expected = report["stages"][name]["losses"], reference["stages"][name]["losses"]
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-5), name
    reference_weights = load_file(reference_out / "model" / "model.safetensors")
    weights = load_file(tmp_path / "compiled" / "model" / "model.safetensors")
    for name, weight in reference_weights.items():
        torch.testing.assert_close(weights[name], weight, rtol=1e-4, atol=1e-5)


def test_convert_in_bf16_mixed_precision(assets, tmp_path):
    """The GPU's precision setting (bf16 autocast, fp32 master weights), run on the CPU: every stage trains, the
    export's search runs under autocast, and the checkpoint keeps fp32 weights."""
    out = tmp_path / "bf16"
    # A process of its own: accelerate fixes the precision once per process (as `hypenet convert` runs anyway).
    run = subprocess.run([sys.executable, "-m", "hypenet.cli", "convert", *cli_args(assets, "qwen3", out),
                          "--set", "mixed_precision=bf16"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["mixed_precision"] == "bf16"
    check_conversion(out, report)
    weights = load_file(str(out / "model" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}


def test_stage1_loss_goes_down_on_a_fixed_batch(assets):
    from hypenet.teachers import load_teacher

    teacher, _ = load_teacher(assets["qwen3"])
    torch.manual_seed(0)
    objective = LayerAlignment(teacher)
    input_ids = torch.randint(0, teacher.config.vocab_size, (2, 32))
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = objective(input_ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is None for p in teacher.parameters())


def test_sigkill_then_resume_gives_the_same_weights(assets, qwen3_conversion):
    reference_out, _ = qwen3_conversion
    out = assets["root"] / "killed-out"
    command = [sys.executable, "-m", "hypenet.cli", "convert", *cli_args(assets, "qwen3", out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoints = out / "stages" / "stage2" / "checkpoints"
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("step-*[0-9]")):
        assert process.poll() is None, f"the conversion ended before stage 2 checkpointed: {process.stderr.read()}"
        assert time.monotonic() < deadline, "no stage-2 checkpoint within 4 minutes"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "stages" / "stage2" / "done.json").exists(), "stage 2 finished before the kill"

    assert main(["convert", *cli_args(assets, "qwen3", out), "--resume"]) == 0

    reference = load_file(reference_out / "model" / "model.safetensors")
    resumed = load_file(out / "model" / "model.safetensors")
    assert reference.keys() == resumed.keys()
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], rtol=0, atol=1e-6)

    # Stage 1 ran once; stage 2 continued after its checkpoint: no step up to it was computed twice.
    assert [r["step"] for r in read_losses(out / "stages" / "stage1")] == list(range(1, 17))
    records = read_losses(out / "stages" / "stage2")
    (resume_at,) = [i for i, r in enumerate(records) if r.get("event") == "resume"]
    checkpoint_step = records[resume_at]["step"]
    before, after = [r["step"] for r in records[:resume_at]], [r["step"] for r in records[resume_at + 1 :]]
    assert checkpoint_step >= 5 and before[:checkpoint_step] == list(range(1, checkpoint_step + 1))
    assert after == list(range(checkpoint_step + 1, 33))


def test_ctrl_c_checkpoints_the_step_in_flight(assets):
    """SIGINT (Ctrl-C, or `timeout` in scripts/gpu_convert.sh) during a stage: the conversion writes a checkpoint of
    its last finished step, says how to continue and exits with 130."""
    out = assets["root"] / "interrupted-out"
    command = [sys.executable, "-m", "hypenet.cli", "convert", *cli_args(assets, "qwen3", out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_stage2_steps(process, out)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert f"continue with: hypenet convert --out {out} --resume" in stderr
    last = read_losses(out / "stages" / "stage2")[-1]["step"]
    assert last < 32 and [p.name for p in (out / "stages" / "stage2" / "checkpoints").iterdir()] == [f"step-{last:08d}"]


def timed(function, into: list):
    """`function`, appending the seconds each call takes to `into` (an interrupted call's too)."""
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - start)
    return call


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def stopped_and_resumed(assets):
    """A conversion stopped by Ctrl-C after stage 2's step 6 and resumed, in this process: its report, the seconds
    each invocation took as a whole (`invocations`) and in the teacher's load and each stage (lists per name, of
    both invocations), the stage's saved time at step 6 (before the stop), each invocation's log lines, and the
    lengths of the sequences the export ran through the student (`export_lengths`)."""
    from hypenet.halo import export

    out = assets["root"] / "stopped-resumed-out"
    config = tiny_config(assets, "qwen3", out)
    measured = {name: [] for name in ("load_teacher", *pipeline.STAGES)}
    result = {"measured": measured, "invocations": [], "logs": [], "out": out, "export_lengths": []}
    engine, train = pipeline.engine, pipeline.engine.train
    token_nlls = export.token_nlls

    def recorded_nlls(model, input_ids, **kwargs):
        result["export_lengths"].append(len(input_ids))
        return token_nlls(model, input_ids, **kwargs)

    def stop_stage2_at_step_6(name, objective, train_config, chunks, stage_dir, run):
        if name == "stage2":
            after_step = run.after_step

            def after(step):
                if after_step is not None:
                    after_step(step)
                if step == 6:
                    saved = stage_dir / "wall_time.json"
                    result["saved_at_6"] = json.loads(saved.read_text()) if saved.is_file() else None
                    os.kill(os.getpid(), signal.SIGINT)
            run = dataclasses.replace(run, after_step=after)
        return train(name, objective, train_config, chunks, stage_dir, run)

    logger, lines = logging.getLogger("hypenet.halo.pipeline"), Lines()
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(export, "token_nlls", recorded_nlls)
            patch.setattr(pipeline, "load_teacher", timed(pipeline.load_teacher, measured["load_teacher"]))
            for name in pipeline.STAGES:
                patch.setitem(pipeline.STAGE_RUNNERS, name, timed(pipeline.STAGE_RUNNERS[name], measured[name]))
            for resume in (False, True):
                with patch.context() as first:
                    if not resume:
                        first.setattr(engine, "train", stop_stage2_at_step_6)
                    start = time.perf_counter()
                    try:
                        result["report"] = convert(config, resume=resume)
                    except KeyboardInterrupt:
                        assert not resume
                    result["invocations"].append(time.perf_counter() - start)
                    result["logs"].append(lines.lines)
                    lines.lines = []
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    assert len(measured["stage2"]) == 2 and len(measured["stage1"]) == 1, "stage 2 was not stopped and resumed"
    return result


def test_wall_times_add_up_every_invocation_of_a_stopped_and_resumed_conversion(stopped_and_resumed):
    """A stage's wall_time_s counts every invocation that ran it (stage 2: the stopped one's and the resumed one's
    time, setup and saving included); the report's wall_time_s adds each invocation's loading. Every measured
    interval lies inside what the conversion counts, so its times are at least their sums (less rounding to 0.01 s),
    and at most the two invocations' whole times."""
    report, measured = stopped_and_resumed["report"], stopped_and_resumed["measured"]
    rounding = 0.01 * (len(pipeline.STAGES) + 1)
    stages = {**report["stages"], "select": report["selection"], "export": report["export"]}
    for name in pipeline.STAGES:
        assert stages[name]["wall_time_s"] >= sum(measured[name]) - 0.01, name
    stage2 = report["stages"]["stage2"]
    assert stage2["training_time_s"] <= stage2["wall_time_s"]
    # stage 2 was run twice (stopped, then resumed), the others once; the report's table says so
    assert {name: stages[name]["runs"] for name in pipeline.STAGES} == {
        "stage1": 1, "select": 1, "stage2": 2, "stage3": 1, "export": 1}
    assert re.search(r"^\| stage2 \| [\d.]+ \| \d+ \| [\d.]+ \| 2 \| ", (stopped_and_resumed["out"] / "report.md")
                     .read_text(), re.MULTILINE)
    # saved after every training step: a SIGKILL'ed run's time counts too
    assert stopped_and_resumed["saved_at_6"] is not None, "the stage's time was not saved during training"
    saved = stopped_and_resumed["saved_at_6"]["wall_time_s"]
    assert 0 < saved <= measured["stage2"][0] and stage2["wall_time_s"] >= saved + measured["stage2"][1] - 0.01
    # the loading of both invocations (the teacher's load in each), with the stage each began with
    assert report["loading_time_s"] >= sum(measured["load_teacher"]) - 0.01
    assert report["stages"]["stage1"]["loading_time_s"] >= measured["load_teacher"][0] - 0.01
    assert stage2["loading_time_s"] >= measured["load_teacher"][1] - 0.01
    everything = sum(sum(seconds) for seconds in measured.values())
    assert everything - rounding <= report["wall_time_s"] <= sum(stopped_and_resumed["invocations"]) + rounding
    out = stopped_and_resumed["out"]
    assert json.loads((out / "report.json").read_text())["wall_time_s"] == report["wall_time_s"]
    assert "summed over every run of it, those stopped and resumed included" in (out / "report.md").read_text()
    # called as a library, in a process that did other things first: its start-up is not the conversion's
    assert "startup_time_s" not in report and "imports, a few seconds, are not in it" in (out / "report.md").read_text()
    assert not list(out.glob("stages/*/wall_time.json"))  # (done.json holds it once a stage is done)


def test_every_stage_records_the_machine_that_ran_it(stopped_and_resumed):
    """Each stage's done.json, and so the report, names what ran it: here the CPU, in both invocations of the stopped
    and resumed stage 2, so once."""
    label = pipeline.machine_label("cpu")
    assert label.startswith("CPU (") and label.endswith(f", torch {torch.__version__}")
    report = stopped_and_resumed["report"]
    stages = {**report["stages"], "select": report["selection"], "export": report["export"]}
    assert {name: stages[name]["machines"] for name in pipeline.STAGES} == {name: [label] for name in pipeline.STAGES}
    assert f"| {label} |" in (stopped_and_resumed["out"] / "report.md").read_text()


def test_a_stage_resumed_on_another_machine_keeps_both_each_once(tmp_path):
    """The machines of a stage's earlier invocations (its wall_time.json) come first; this one's is added once."""
    h200, h100 = "NVIDIA H200, torch 2.11.0+cu130", "NVIDIA H100 80GB HBM3, torch 2.11.0+cu130"
    (tmp_path / pipeline.WALL_TIME).write_text(json.dumps({"wall_time_s": 5.0, "machines": [h200]}))
    clock = pipeline.StageClock(tmp_path, 0.0, True, machine=h100)
    assert clock.machines == [h200, h100]
    clock.save()
    saved = json.loads((tmp_path / pipeline.WALL_TIME).read_text())
    assert saved["machines"] == [h200, h100] and saved["wall_time_s"] >= 5.0
    assert pipeline.StageClock(tmp_path, 0.0, True, machine=h200).machines == [h200, h100]


def test_the_commands_start_up_counts_in_the_wall_time(assets, tmp_path):
    """`hypenet STAGE` counts its process's start-up (the interpreter, the imports: from the process's start, which
    Linux's /proc tells, to the conversion's) with the stage it begins with: more than nothing, less than the process's
    whole age; and the report's stage table, the start-up and loading its last row, adds up to its wall_time_s."""
    if pipeline.process_age() is None:
        pytest.skip("no /proc here: a process's start time is not known (the report says start-up is left out)")
    out = tmp_path / "out"
    code = f"""
import json, sys
from hypenet.cli import main
from hypenet.halo.pipeline import process_age
sys.argv = ["hypenet", "stage1", *{cli_args(assets, "qwen3", out)!r}]  # (its own command line)
code = main()
print(json.dumps({{"code": code, "age": process_age()}}))
"""
    began = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    lifetime = time.perf_counter() - began  # (from before the process started to after it ended)
    assert run.returncode == 0, run.stderr[-3000:]
    ended = json.loads(run.stdout.splitlines()[-1])
    assert ended["code"] == 0
    report = json.loads((out / "report.json").read_text())
    stage1 = report["stages"]["stage1"]
    assert 0 < report["startup_time_s"] == stage1["startup_time_s"] < ended["age"] < lifetime
    # the rows of the conversion's time fit in the process's life (less rounding to 0.01 s and the start's 10 ms tick)
    assert stage1["startup_time_s"] + stage1["loading_time_s"] + stage1["wall_time_s"] <= ended["age"] + 0.04
    table = (out / "report.md").read_text().split("## Stages")[1].split("\n\n")[1].splitlines()[2:]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in table]
    assert [row[0] for row in cells] == ["stage1", "start-up and loading (interpreter, imports, teacher, data)"]
    assert sum(float(row[3]) for row in cells) == pytest.approx(report["wall_time_s"], abs=0.011)
    assert "every run's start-up (from its process's start" in (out / "report.md").read_text()


def test_under_a_launcher_the_commands_start_up_counts_from_the_launchers_start(tmp_path):
    """A process that torchrun (as `accelerate launch` does for several GPUs) started: the command's age is the
    launcher's, which imported torch before it started the worker, so more than the worker's own age and less than
    the whole launch; so is that of a process the worker started, whose grandparent is the launcher. A plain process
    with a launcher's variable in its environment (inherited, say) has its own age: no near ancestor is a launcher."""
    if pipeline.process_age() is None:
        pytest.skip("no /proc here: a process's start time is not known")
    script = tmp_path / "ages.py"
    script.write_text("import json, os, subprocess, sys, time\n"
                      "from hypenet.halo.pipeline import command_age, process_age\n"
                      "ages = {'command': command_age(), 'own': process_age(), 'now': time.time()}\n"
                      "if os.environ.get('LOCAL_RANK'):  # (the worker, not its child)\n"
                      "    child = subprocess.run([sys.executable, __file__], capture_output=True, text=True,\n"
                      "                           env={k: v for k, v in os.environ.items() if k != 'LOCAL_RANK'})\n"
                      "    ages['child'] = child.stdout.splitlines()[-1] if child.returncode == 0 else child.stderr\n"
                      "print(json.dumps(ages))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(pipeline.__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    began = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                          str(script)], capture_output=True, text=True, env=env, timeout=300)
    lifetime = time.perf_counter() - began
    assert run.returncode == 0, run.stderr[-3000:]
    launched = json.loads(run.stdout.splitlines()[-1])
    assert launched["own"] + 0.5 < launched["command"] < lifetime  # (torchrun's own imports take seconds)
    # one more process between (as an mpirun or a shell may stand between a launcher and its workers): the same start
    assert launched["child"].startswith("{"), launched["child"][-3000:]  # (else the child's stderr)
    child = json.loads(launched["child"])
    assert child["own"] + 0.5 < child["command"] < lifetime
    started = [ages["now"] - ages["command"] for ages in (launched, child)]  # (the launcher's start, each as read)
    # (0.25 s: each is two clock reads that a loaded machine may part; the worker's start, the wrong answer, comes
    # seconds after the launcher's)
    assert started[1] == pytest.approx(started[0], abs=0.25)
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                           env={**env, "TORCHELASTIC_RUN_ID": "inherited"})
    assert plain.returncode == 0, plain.stderr[-3000:]
    alone = json.loads(plain.stdout.splitlines()[-1])
    assert alone["command"] == pytest.approx(alone["own"], abs=0.25)  # (read a moment apart; a parent is seconds older)


def parse_estimate(line: str, left_out: str | None = None) -> tuple[str, str, dict[str, int], dict[str, float]]:
    """(the time it says, the stage measured, the tokens it names by stage, their tokens/s by stage) of an estimate's
    line, which must say that it leaves `left_out` out (None: nothing)."""
    said, what, body = re.fullmatch(r"conversion: about (.+?) of (training.*?) left \(estimate: (.+)\)", line).groups()
    uncounted = re.search(r"; ([^;()]+) not counted$", body)
    parts = body[:uncounted.start() if uncounted else None].split("; the later stages' ")[0]
    named = [re.fullmatch(r"([\d,]+) (?:tokens )?of (\w+) at (?:its measured )?([\d,]+)(?: tokens/s)?", part).groups()
             for part in parts.split(", then ")]
    tokens = {name: int(count.replace(",", "")) for count, name, _ in named}
    rates = {name: float(rate.replace(",", "")) for _, name, rate in named}
    # the selection and the export are counted, and said to be, where they are named; once done, or not run by this
    # invocation, they are not said to be left out
    counted = [*(["layer selection"] if "select" in tokens else []), *(["export"] if "export" in tokens else [])]
    assert what == " and ".join(", ".join(["training", *counted]).rsplit(", ", 1)), line
    assert (uncounted.group(1) if uncounted else None) == left_out, line
    return said, named[0][1], tokens, rates


def test_the_conversion_logs_its_time_left_from_the_stages_tokens_and_measured_throughput(stopped_and_resumed):
    """At every tenth of a training stage (not at its last step), the line of the whole conversion's estimate: the
    tokens left in this stage and those of the training stages after it (not those done: the resumed run's stage 2
    names stage 3 alone), at this stage's tokens/s (its logged step times' median, this invocation's first step left
    out) and the later ones' at that over their cost per token relative to it (`plan.relative_costs`, on this CPU the
    ratio of model FLOPs per token), and the time those take. The layer selection's teacher passes are among the
    later ones while it lies ahead (in stage 1), and the export's search last: the tokens it then ran through the
    student, at its FLOPs per token (`plan.export_flops`) for the lengths it ran."""
    from hypenet.halo.plan import relative_costs, selection_tokens
    from hypenet.units import duration_label

    report, out = stopped_and_resumed["report"], stopped_and_resumed["out"]
    budgets = {name: stage["tokens"] for name, stage in report["stages"].items()}  # 4096, 8192, 2048
    config = resolve(load_config(base=read_config(out / "config.yaml")), report["teacher_parameters"])
    teacher_cfg = AutoConfig.from_pretrained(report["teacher"])
    # the smoke preset's grid is one base (500), so the search measured it alone: what it ran is one base's lengths
    assert list(report["export"]["losses"]) == ["500"] and config.export.logit_scaling_candidates == [500.0]
    export_lengths = stopped_and_resumed["export_lengths"]
    assert export_lengths
    seen = []
    for invocation, lines in enumerate(stopped_and_resumed["logs"]):
        estimates = [parse_estimate(line) for line in lines if line.startswith("conversion: about")]
        for said, stage, tokens, rates in estimates:
            seen.append((invocation, stage))
            records = read_losses(out / "stages" / stage)
            resumes = [i for i, r in enumerate(records) if r.get("event") == "resume"]
            run = records[resumes[0] + 1:] if invocation == 1 and resumes else records[:resumes[0] if resumes else None]
            steps, per_step = report["stages"][stage]["steps"], budgets[stage] // report["stages"][stage]["steps"]
            later = {"stage1": ["select", "stage2", "stage3"], "stage2": ["stage3"], "stage3": []}[stage] + ["export"]
            assert list(tokens) == [stage, *later]
            assert all(tokens[n] == budgets[n] for n in tokens if n not in (stage, "select", "export"))
            assert tokens.get("select", 0) == (selection_tokens(config, 4) if stage == "stage1" else 0)
            assert tokens["export"] == sum(export_lengths)
            done = steps - tokens[stage] // per_step
            assert tokens[stage] == (steps - done) * per_step
            seconds = [r["seconds"] for r in run if "loss" in r and r["step"] <= done]
            rate = per_step / statistics.median(seconds[1:][-20:])
            assert rates[stage] == pytest.approx(rate, rel=5e-3, abs=0.5)
            cost = relative_costs(teacher_cfg, config, stage, gpu=False, export_lengths=export_lengths)
            for name in later:
                assert rates[name] == pytest.approx(rate / cost[name], rel=5e-3, abs=0.5)
            left = sum(tokens[name] / rates[name] for name in tokens)
            assert said in {duration_label(left * f) for f in (0.99, 1, 1.01)}
    # once four steps are trained, then at every tenth of the stage, in every stage each invocation trains for more
    # than four steps (not stage 3, whose last step is its fourth: nothing of it is left to estimate there)
    assert report["stages"]["stage3"]["steps"] == pipeline.engine.FIRST_PROGRESS_STEP
    assert sorted(set(seen)) == [(0, "stage1"), (0, "stage2"), (1, "stage2")]
    assert seen.count((0, "stage1")) == 6  # after steps 4, 6, ..., 14 of 16


SWEEP = {"stage1": 1.0, "stage2": 2.0, "stage3": 2.0}


@pytest.mark.parametrize("overrides, costs, named, uncounted", [
    ([], {**SWEEP, "select": 0.25}, ["select", "stage2", "stage3"], "export"),
    ([], None, ["stage2", "stage3"], "selection and export"),  # no cost per token: the sweep is left out, and said so
    (["select.lm_eval_recall=[swde]", "select.lm_eval_commonsense=[piqa]"], SWEEP, ["stage2", "stage3"],
     "selection and export"),
    (["select.strategy=even"], SWEEP, ["stage2", "stage3"], "export"),
    # the export's grid counted; the bases it may add past the grid's edge are not (they depend on the losses)
    ([], {**SWEEP, "select": 0.25, "export": 0.5}, ["select", "stage2", "stage3", "export"],
     "up to 4 bases past the export's grid"),
    (["export.logit_scaling_candidates=[500]"], {**SWEEP, "select": 0.25, "export": 0.5},
     ["select", "stage2", "stage3", "export"], None),  # one base: nothing past it to try
    (["select.strategy=none"], SWEEP, ["stage2", "stage3"], None),  # no attention layer: no base to search
])
def test_the_estimate_in_stage1_names_the_layer_selection_and_export_it_counts(overrides, costs, named, uncounted,
                                                                             caplog):
    """In stage 1 of a conversion the layer selection and the export lie ahead: the selection's sweep with the
    built-in probes is counted where its cost per token is known, and the export's search over its grid of bases
    (each base the same held-out sequences); a sweep of lm-eval's tasks, or one of unknown cost, is said to be left
    out, and so are the export's bases past its grid; a strategy that sweeps nothing is neither, and a student
    without attention layers searches no base."""
    config = resolve(load_config(overrides=overrides), 10**8)
    conv = SimpleNamespace(running=list(pipeline.STAGES), done=lambda name: None, config=config,
                           stage_costs=lambda: costs, teacher_config=SimpleNamespace(num_hidden_layers=30),
                           export_lengths=lambda: [1000, 600])
    conv.attention_layers_ahead = lambda: pipeline.Conversion.attention_layers_ahead(conv)
    with caplog.at_level(logging.INFO, logger="hypenet.halo.pipeline"):
        pipeline.Conversion.log_time_left(conv, "stage1", 2048, 2, 12, 400.0)
    _, _, tokens, _ = parse_estimate(caplog.messages[-1], uncounted)
    assert list(tokens) == ["stage1", *named]
    if "export" in tokens:
        assert tokens["export"] == len(config.export.logit_scaling_candidates) * 1600


def copy_done_stages(reference_out: Path, out: Path, *names: str) -> None:
    """Start `out` as a conversion whose stages `names` are done: theirs and the config from `reference_out`."""
    for name in names:
        shutil.copytree(reference_out / "stages" / name, out / "stages" / name)
    shutil.copy(reference_out / "config.yaml", out / "config.yaml")


def two_process_stage2(reference_out: Path, out: Path) -> tuple[list[str], dict]:
    """(command, environment) of stage 2 on 2 gloo processes (torchrun) in `out`, from the reference conversion's
    stage 1 and selection."""
    copy_done_stages(reference_out, out, "stage1", "select")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "hypenet.cli", "stage2", "--out", str(out)]
    return command, {**os.environ, "OMP_NUM_THREADS": "1"}


def test_two_gloo_processes_match_one_in_stage2(assets, qwen3_conversion):
    """Data parallelism on 2 CPU processes (accelerate runs FSDP and DeepSpeed only on GPUs: issue 7)."""
    reference_out, _ = qwen3_conversion
    out = assets["root"] / "ddp-out"
    command, env = two_process_stage2(reference_out, out)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("stage2: 2 process(es), MULTI_CPU,") == 1  # really data-parallel; logged once
    single = [r["loss"] for r in read_losses(reference_out / "stages" / "stage2")]
    double = [r["loss"] for r in read_losses(out / "stages" / "stage2")]
    assert len(double) == len(single) == 32
    torch.testing.assert_close(torch.tensor(double), torch.tensor(single), rtol=1e-4, atol=1e-5)
    # The student saved from the replicas is the single-process one.
    alone = load_file(str(reference_out / "stages" / "stage2" / "model" / "model.safetensors"))
    gathered = load_file(str(out / "stages" / "stage2" / "model" / "model.safetensors"))
    assert set(gathered) == set(alone)
    assert max((gathered[k] - alone[k]).abs().max().item() for k in alone) <= 1e-5


def test_ctrl_c_stops_two_processes_at_one_step_and_resume_trains_the_rest(assets, qwen3_conversion):
    """Ctrl-C in the terminal of a 2-process run (torchrun, as `accelerate launch` starts one process per GPU): the
    launcher and both workers get SIGINT; both workers finish the same optimizer step, one checkpoint of it is
    written, and `--resume` trains the remaining steps as the uninterrupted run did."""
    reference_out, _ = qwen3_conversion
    out = assets["root"] / "ddp-interrupted"
    command, env = two_process_stage2(reference_out, out)
    last, _ = ctrl_c_in_two_process_stage2(command, env, out)
    saved = {p.name for p in (out / "stages" / "stage2" / "checkpoints" / f"step-{last:08d}").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl", "trainer_state.json"} <= saved, saved  # both processes'
    alone = assets["root"] / "ddp-interrupted-resumed-alone"
    shutil.copytree(out, alone)

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = steps_after_resume(out, last)
    single = {r["step"]: r["loss"] for r in read_losses(reference_out / "stages" / "stage2")}
    assert [r["loss"] for r in after] == pytest.approx([single[r["step"]] for r in after], rel=1e-4)
    # resumed on one process instead (each process took half of the batch, which one process takes whole): the same
    # course (a run that took the halves for a shrunk micro batch stepped the optimizer every other step)
    assert main(["stage2", "--out", str(alone), "--resume"]) == 0
    after = steps_after_resume(alone, last)
    assert [r["loss"] for r in after] == pytest.approx([single[r["step"]] for r in after], rel=1e-4)


def test_a_layer_selection_stopped_part_way_goes_on_from_the_layers_it_scored(qwen3_conversion, tmp_path,
                                                                            monkeypatch, capsys, caplog):
    """SIGTERM (as Ctrl-C) during the layer selection's sweep, at layer 2 of 4: the run says which layers' scores it
    kept and how to go on (exit 130). `--resume` with other probe settings says so and scores every layer again;
    `--resume` with the same ones scores layers 2 and 3 alone and records the uninterrupted conversion's selection,
    and the file of the scores so far goes once done.json holds them."""
    from hypenet.halo import select

    reference_out, _ = qwen3_conversion
    out = tmp_path / "run"
    copy_done_stages(reference_out, out, "stage1")
    partial = out / "stages" / "select" / "scored_layers.json"
    clock = out / "stages" / "select" / pipeline.WALL_TIME
    swap, swapped, saved_before_stop = select.swap_attention, [], []

    def run(*args: str, stop_at: int | None = None) -> int:
        def swap_or_stop(teacher, layer_idx, *rest, **kwargs):
            if layer_idx == stop_at:
                # the stage's time so far was saved with the last layer's scores (as a SIGKILL now would leave it)
                saved_before_stop.append(json.loads(clock.read_text()) if clock.is_file() else None)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)  # (the signal arrives before this ends)
            swapped.append(layer_idx)
            return swap(teacher, layer_idx, *rest, **kwargs)

        swapped.clear()
        caplog.clear()
        with monkeypatch.context() as patch, caplog.at_level(logging.INFO, logger="hypenet.halo.select"):
            patch.setattr(select, "swap_attention", swap_or_stop)
            return main(["select", "--out", str(out), *args])

    assert run("--set", "select.recall_samples=3", stop_at=2) == 130
    assert f"interrupted; continue with: hypenet select --out {out} --resume" in capsys.readouterr().err
    assert (f"layer selection: interrupted at layer 2 of 4; the scores of layers 0-1 are kept in {partial}; --resume "
            "goes on from layer 2") in caplog.messages
    assert swapped == [0, 1] and list(json.loads(partial.read_text())["recall"]) == ["0", "1"]
    assert saved_before_stop[0] is not None and 0 < saved_before_stop[0]["wall_time_s"] <= json.loads(
        clock.read_text())["wall_time_s"], saved_before_stop

    assert run("--resume", "--set", "select.recall_samples=2", stop_at=2) == 130  # the reference's setting
    assert (f"layer selection: starting again at layer 0: the 2 layers scored before ({partial}) were scored with "
            "another probes.recall_samples") in caplog.messages
    assert swapped == [0, 1]

    assert run("--resume") == 0
    assert "layer selection: resuming at layer 2 of 4 (2 scored before the stop)" in caplog.messages
    assert swapped == [2, 3]
    assert not partial.exists()
    done, reference = (json.loads((run_dir / "stages" / "select" / "done.json").read_text())
                       for run_dir in (out, reference_out))
    assert (done["runs"], reference["runs"]) == (3, 1)
    for info in (done, reference):
        for key in ("wall_time_s", "loading_time_s", "runs"):
            info.pop(key)
        info["settings"].pop("seconds")
    assert done == reference


# ---- bad input: a clear error, a non-zero exit, nothing lost ----------------------------------------------------


def test_missing_teacher(assets, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", "--teacher", str(tmp_path / "no-such-teacher"), "--out", str(out)]) == 2
    assert "no-such-teacher" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["stage1", "--from", "runs/a"], "usage: hypenet stage1 [-h]"),  # --from starts a stage after stage 1
    (["convert", "--set", "stage2.lr", "1e-3"], "hypenet convert: error: unrecognized arguments: 1e-3 (--set takes "
                                               "KEY=VALUE as one argument)"),
    (["eval", "runs/a/model", "--nonsense"], "hypenet eval: error: unrecognized arguments: --nonsense\n"),
])
def test_an_argument_a_command_does_not_take_shows_that_commands_usage(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and "usage: hypenet [-h] [--version] COMMAND" not in err


def test_hypenet_alone_prints_its_commands_and_version(capsys):
    from hypenet import __version__

    assert main([]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: hypenet [-h] [--version] COMMAND ...")
    assert all(f"    {command} " in printed for command in ("convert", "eval", "compare", "bench", "generate"))
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"hypenet {__version__}\n"


def test_resume_of_a_folder_with_no_conversion_says_it_starts_one(assets, tmp_path, caplog):
    out = tmp_path / "typo"  # a mistyped --out must not restart a long run unannounced
    with caplog.at_level(logging.WARNING, logger="hypenet.halo.pipeline"):
        assert main(["convert", "--teacher", str(tmp_path / "no-such-teacher"), "--out", str(out), "--resume"]) == 2
    assert f"--resume: {out} holds no conversion yet; starting one from the beginning" in caplog.text
    caplog.clear()
    out.mkdir()
    (out / "config.yaml").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="hypenet.halo.pipeline"):
        main(["convert", "--teacher", str(tmp_path / "no-such-teacher"), "--out", str(out), "--resume"])
    assert "holds no conversion yet" not in caplog.text


def test_an_output_that_cannot_be_a_folder_fails_before_the_teacher_loads(assets, tmp_path, capsys, monkeypatch):
    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr("hypenet.halo.pipeline.Conversion", no_teacher)
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    assert main(["convert", *cli_args(assets, "qwen3", a_file)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {a_file} is a file; pass a folder"
    below = a_file / "out"
    assert main(["convert", *cli_args(assets, "qwen3", below)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: cannot write in the output folder {below} (")
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize("flag", [[], ["--resume"], ["--overwrite"]])
def test_a_folder_of_other_files_is_not_taken_over(assets, tmp_path, capsys, flag):
    """--overwrite replaced the whole --out (a user's `--out .` emptied the folder); --resume started a conversion
    among the files. A folder that holds no conversion is the user's: refused, whatever the flag, and kept."""
    out = tmp_path / "out"
    (out / "src").mkdir(parents=True)
    (out / "precious.txt").write_text("keep me")
    assert main(["convert", *cli_args(assets, "qwen3", out), *flag]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --out {out} holds files that are not a conversion's (precious.txt, src); pass a new or empty --out "
        "(--overwrite replaces a conversion, not a folder of other files)")
    assert (out / "precious.txt").read_text() == "keep me" and (out / "src").is_dir()


def test_overwrite_removes_only_what_a_conversion_wrote(qwen3_conversion, tmp_path):
    """A stage run again with --overwrite removes the stages after it and the exported model and report made from
    them (the old export stayed, as if made from the new stage); the whole conversion's --overwrite removes what a
    conversion writes and keeps the user's own files beside it."""
    from hypenet.halo.pipeline import remove_for_overwrite

    reference, _ = qwen3_conversion
    out = tmp_path / "again"
    shutil.copytree(reference, out)
    (out / "notes.txt").write_text("mine")
    assert main(["stage3", "--out", str(out), "--overwrite", "--set", "stage3.lr=2e-4"]) == 0
    assert (out / "stages" / "stage3" / "done.json").is_file() and not (out / "stages" / "export").exists()
    assert not (out / "model").exists() and json.loads((out / "report.json").read_text())["student_path"] is None
    with pipeline.hold_lock(out):  # (the lock stays: the process that overwrites holds it)
        remove_for_overwrite(out, whole=True, first=0)
        assert sorted(p.name for p in out.iterdir()) == [".hypenet.lock", "notes.txt"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_two_processes_cannot_write_one_conversion(qwen3_conversion, tmp_path, capsys):
    """A second process in a folder being converted resumed from the first one's checkpoint and both wrote the same
    steps; the folder's lock refuses it."""
    from hypenet.halo.pipeline import LOCK_FILE, hold_lock

    reference, _ = qwen3_conversion
    out = tmp_path / "again"
    shutil.copytree(reference, out)
    lock = hold_lock(out)  # (flock: a second open of the file conflicts even within one process)
    try:
        assert main(["export", "--out", str(out), "--overwrite"]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: another hypenet process (pid {os.getpid()}) is writing {out}; wait for it to end, or pass another "
            "--out")
    finally:
        lock.release()
    assert main(["export", "--out", str(out), "--overwrite"]) == 0
    # a finished run leaves no lock file behind (the conversion's own run, nor this export)
    assert not (reference / LOCK_FILE).exists() and not (out / LOCK_FILE).exists()


def test_the_lock_file_goes_with_its_holder_and_still_excludes_a_second(tmp_path):
    """The lock file was left in --out after every run. Its holder now removes it as it lets go (`Lock.release`, or
    the end of its `with` block); while held, a second holder is refused."""
    from hypenet.halo.pipeline import LOCK_FILE, hold_lock

    with hold_lock(tmp_path) as lock:
        assert (tmp_path / LOCK_FILE).read_text() == f"pid {os.getpid()}\n"
        with pytest.raises(HaloError, match=f"another hypenet process \\(pid {os.getpid()}\\) is writing"):
            hold_lock(tmp_path)  # (flock: a second open of the file conflicts even within one process)
    assert not (tmp_path / LOCK_FILE).exists()
    lock.release()  # (once is enough)
    again = hold_lock(tmp_path)
    again.release()
    assert list(tmp_path.iterdir()) == []


def test_a_lock_taken_on_the_file_its_holder_removed_is_taken_again(tmp_path, monkeypatch):
    """The race of a removed lock file: B opens the file while A holds it; A removes it and lets go; B's flock then
    succeeds on a file no longer in the folder, where C would create and lock another: two holders. B sees that the
    path is not the file it locked and locks the one there (a new one), so C is refused."""
    import fcntl

    from hypenet.halo.pipeline import LOCK_FILE, hold_lock

    a = hold_lock(tmp_path)
    flock, calls = fcntl.flock, []

    def a_lets_go_first(handle, operation):  # B has opened A's file; A lets go before B's flock
        if not calls:
            a.release()
        calls.append(os.fstat(handle.fileno()).st_nlink)  # (0: removed from the folder)
        return flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", a_lets_go_first)
    b = hold_lock(tmp_path)
    monkeypatch.setattr(fcntl, "flock", flock)
    assert calls == [0, 1]  # locked A's removed file, then tried again on the one in the folder
    assert os.fstat(b.handle.fileno()).st_ino == os.stat(tmp_path / LOCK_FILE).st_ino
    with pytest.raises(HaloError, match="another hypenet process"):
        hold_lock(tmp_path)  # C
    b.release()
    assert not (tmp_path / LOCK_FILE).exists()


def take_the_lock_again_and_again(out: Path, times: int, results) -> None:
    """Try `times` times to take `out`'s lock; each time it is taken, check that no other holder is inside (a file
    only a holder creates, exclusively), then let go. Puts (times taken, times another was inside) in `results`."""
    from hypenet.halo.pipeline import hold_lock

    taken = clashes = 0
    for _ in range(times):
        try:
            lock = hold_lock(out)
        except HaloError:
            continue
        taken += 1
        try:
            os.close(os.open(out / "inside", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os.unlink(out / "inside")
        except FileExistsError:
            clashes += 1
        lock.release()
    results.put((taken, clashes))


def test_processes_taking_and_releasing_the_lock_never_hold_it_together(tmp_path):
    """4 processes take and release one folder's lock 2,000 times each (a fraction of a second): never two holders at
    once, and no lock file left. (A release that let go before removing the file, or a holder that did not check that
    it locked the file in the folder, had two holders hundreds of times in such a run.)"""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=take_the_lock_again_and_again, args=(tmp_path, 2000, results))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * 4
    ended = [results.get(timeout=10) for _ in workers]
    assert sum(taken for taken, _ in ended) > 0 and [clashes for _, clashes in ended] == [0] * 4, ended
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_before_anything_is_saved_says_to_run_the_command_again(tmp_path):
    """`--resume` of a folder without config.yaml would start from the defaults, not from the options given."""
    from hypenet.halo.cli import interrupted_before_anything_hint
    from hypenet.halo.pipeline import CONFIG_FILE

    assert interrupted_before_anything_hint(str(tmp_path / "never-made")) == (
        "interrupted before anything was saved; run the same command again")
    (tmp_path / CONFIG_FILE).write_text("seed: 0\n")
    assert interrupted_before_anything_hint(str(tmp_path)) is None


def test_empty_dataset_fails_before_overwriting(assets, qwen3_conversion, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(qwen3_conversion[0], out)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args = ["convert", "--teacher", str(assets["qwen3"]), "--data", str(empty), "--out", str(out), "--overwrite"]
    assert main(args) == 2
    assert str(empty) in capsys.readouterr().err and (out / "model" / "model.safetensors").is_file()


def test_tokenizer_of_another_model(assets, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    shutil.copytree(assets["qwen3"], teacher)
    make_tokenizer(make_documents(50, seed=1), vocab_size=200).save_pretrained(teacher)
    args = cli_args(assets, "qwen3", tmp_path / "out")
    args[args.index("--teacher") + 1] = str(teacher)
    assert main(["convert", *args]) == 2
    assert "belongs to another model" in capsys.readouterr().err


def test_a_tokenizer_with_tokens_past_the_embedding_names_them(assets, tmp_path, capsys):
    """A tokenizer class that adds its own special tokens (Qwen2's `<|endoftext|>` on a tokenizer without it) past the
    teacher's embedding: the error names the ids and tokens with no embedding, not "another model"; a tokenizer without
    an EOS token says how to set one."""
    teacher = tmp_path / "teacher"
    shutil.copytree(assets["qwen3"], teacher)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    rows = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.save_pretrained(teacher)
    args = cli_args(assets, "qwen3", tmp_path / "out")
    args[args.index("--teacher") + 1] = str(teacher)
    assert main(["convert", *args]) == 2
    assert (f"has {rows + 2} tokens but the teacher's embedding has {rows} rows; ids {rows} and up ('<|im_start|>', "
            "'<|im_end|>') have no embedding") in capsys.readouterr().err
    no_eos = make_tokenizer(make_documents(300))  # the teacher's own vocabulary
    no_eos.eos_token = None
    no_eos.save_pretrained(teacher)
    assert main(["convert", *args]) == 2
    assert "has no EOS token, which separates documents in the training data: set the teacher's own (tokenizer." \
        "eos_token = '...'" in capsys.readouterr().err


def test_a_teacher_folder_without_tokenizer_files_says_so(assets, tmp_path, capsys):
    """Weights and config.json alone: convert and eval name the missing tokenizer files (transformers would give a
    tokenizer of one token, which convert called another model's and eval's NIAH could not build a haystack with)."""
    teacher = tmp_path / "weights-only"
    teacher.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(assets["qwen3"] / name, teacher / name)
    args = cli_args(assets, "qwen3", tmp_path / "out")
    args[args.index("--teacher") + 1] = str(teacher)
    assert main(["convert", *args]) == 2
    assert "holds no tokenizer files (such as tokenizer.json" in capsys.readouterr().err
    assert main(["eval", str(teacher), "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 2
    assert "holds no tokenizer files" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "eval").exists()


def test_data_of_one_document_is_refused_before_training(assets, tmp_path, capsys):
    """A single .txt file is one document: nothing is held out for the export, which used to fail after every
    training stage. Now the conversion stops at once and says what to give."""
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(make_documents(30)))
    args = cli_args(assets, "qwen3", tmp_path / "out")
    args[args.index("--data") + 1] = str(data)
    assert main(["convert", *args]) == 2
    assert ("leaves no document out of training: it holds one document (a .txt file is one document), and the export "
            "chooses the logit-scaling base on held-out documents") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["convert", *cli_args(assets, "qwen3", tmp_path / "out"), "--set", "data.heldout_fraction=0"]) == 2
    assert "data.heldout_fraction is 0" in capsys.readouterr().err


@pytest.mark.parametrize("tasks, offline, said", [
    ("[no_such_task_xyz]", False, "lm-eval does not know task(s) ['no_such_task_xyz']; check the names "
     "(`lm-eval ls tasks`) or pass the folder with their YAML files as select.lm_eval_include_path."),
    ("[hypenet_tiny_mc]", True, "lm-eval could not fetch the dataset of hypenet_tiny_mc, arc_easy (Couldn't reach "
     "'allenai/ai2_arc' on the Hub (OfflineModeIsEnabled)). Run once where the hub can be reached (the datasets cache "
     "keeps it; then HF_HUB_OFFLINE=1 works), or use tasks whose data is local (select.lm_eval_include_path, "
     "docs/EVAL.md)"),
])
def test_the_selections_lm_eval_tasks_are_checked_before_stage1_trains(assets, tmp_path, capsys, monkeypatch, tasks,
                                                                        offline, said):
    """A layer selection by lm-eval tasks that could not run (a task lm-eval does not know; a dataset it cannot
    fetch) stops the conversion at its start, before stage 1 has trained for nothing, and says what to change."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is optional: pip install 'hypenet[eval]'")
    if offline:  # as datasets fails for a hub task's data that is not cached, with HF_HUB_OFFLINE=1
        from huggingface_hub.errors import OfflineModeIsEnabled

        def get_task_dict(names, manager):
            raise OfflineModeIsEnabled("Couldn't reach 'allenai/ai2_arc' on the Hub (OfflineModeIsEnabled)")

        monkeypatch.setattr(lm_eval.tasks, "get_task_dict", get_task_dict)
    include = Path(__file__).parent / "data" / "lm_eval_tasks"
    args = [*cli_args(assets, "qwen3", tmp_path / "out"), "--set", f"select.lm_eval_recall={tasks}",
            "--set", "select.lm_eval_commonsense=[arc_easy]", "--set", f"select.lm_eval_include_path=[{include}]"]
    assert main(["convert", *args]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: layer selection by lm-eval tasks: {said}"
    assert not (tmp_path / "out").exists()


def test_a_stage_with_other_data_than_the_stages_before_it_is_refused_before_loading(assets, qwen3_conversion,
                                                                                     tmp_path, monkeypatch, capsys):
    """`hypenet export --out RUN --data OTHER --overwrite`: the stages before the export were trained on RUN's data,
    so it is refused before the teacher or the data load, and the advice is to convert again (a stage's --overwrite
    replaces that stage only)."""
    reference, _ = qwen3_conversion
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    other = write_jsonl(tmp_path / "other.jsonl", make_documents(20, seed=5))

    def no_loading(*args, **kwargs):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(pipeline, "Conversion", no_loading)
    assert main(["export", "--out", str(out), "--data", str(other), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert (f"was run with other settings for data.source (see {out / 'config.yaml'}); keep them, or start the "
            f"conversion again with yours: `hypenet convert` with your options and --overwrite (it replaces the "
            f"conversion in {out}), or another --out") in err


def test_documents_with_their_text_under_another_field(assets, tmp_path):
    """`--data docs.jsonl --set data.text_field=body`: the documents are read from that field; without it the error
    names the setting."""
    documents = make_documents(40, seed=3)
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(documents)))
    config = tiny_config(assets, "qwen3", tmp_path / "out", "data.text_field=body")
    config.data.source = str(data)
    corpus = pipeline.Conversion(config).corpus
    tokenizer = AutoTokenizer.from_pretrained(assets["qwen3"])
    assert len(corpus.train_tokens) + sum(map(len, corpus.heldout_docs)) == \
        sum(len(tokenizer(d)["input_ids"]) + 1 for d in documents)  # (each document and its EOS)
    with pytest.raises(HaloError, match=r"has no field 'text' \(found \['body', 'id'\]\).*--set data.text_field=NAME"):
        config.data.text_field = "text"
        pipeline.Conversion(config).corpus


def test_a_stage_that_runs_the_teacher_past_its_window_warns(assets, tmp_path, monkeypatch, recwarn):
    # the teachers' window is 4096 tokens; stage 3 trains without the teacher and may go past it
    config = tiny_config(assets, "qwen3", tmp_path / "out", "stage2.seq_len=8192", "stage3.seq_len=16384",
                         "export.eval_len=32768")
    ran = []
    monkeypatch.setattr(pipeline, "STAGE_RUNNERS", {name: lambda conv, name=name: ran.append(name) or {}
                                                    for name in pipeline.STAGES})
    conversion = pipeline.Conversion(config)
    recwarn.clear()
    for name in ("stage1", "select", "stage3"):
        conversion.run_stage(name)
    assert [str(w.message) for w in recwarn if "context window" in str(w.message)] == []
    with pytest.warns(UserWarning, match=r"stage2.seq_len=8192 is longer than the teacher's context window \(4096 "
                                         r"tokens, its max_position_embeddings\): stage 2 distils the teacher's "
                                         r"predictions there.* Keep it at most 4096"):
        conversion.run_stage("stage2")
    assert ran == ["stage1", "select", "stage3", "stage2"]


@pytest.mark.parametrize("overrides, message", [
    (["select.num_attention=5"], "error: select.num_attention must be between 1 and the teacher's 4 layers; got 5"),
    (["select.strategy=manual", "select.manual_layers=1,4"],
     "error: attention layer indices [4] are out of range: the teacher has layers 0..3"),
])
def test_a_selection_the_teacher_cannot_have_stops_before_anything_is_written(assets, tmp_path, capsys, overrides,
                                                                              message):
    out = tmp_path / "out"
    assert main(["convert", *cli_args(assets, "qwen3", out), *[a for o in overrides for a in ("--set", o)]]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == message and not out.exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(assets, tmp_path, monkeypatch):
    forward = LayerAlignment.forward
    calls = []

    def diverging(self, input_ids):
        calls.append(1)
        loss = forward(self, input_ids)
        return loss * float("nan") if len(calls) > 7 else loss

    monkeypatch.setattr(LayerAlignment, "forward", diverging)
    out = tmp_path / "out"
    with pytest.raises(HaloError, match="loss is nan at step 8.*step-00000005") as error:
        run_stages(tiny_config(assets, "qwen3", out), ["stage1"])
    stage_dir = out / "stages" / "stage1"
    assert [p.name for p in (stage_dir / "checkpoints").iterdir()] == ["step-00000005"]
    assert not (stage_dir / "done.json").exists()
    # the command the error gives runs the stage again with a lower learning rate (a --resume would be refused: the
    # stage's settings are kept)
    command = f"hypenet stage1 --out {out} --overwrite --set stage1.lr=LOWER"
    assert command in str(error.value)
    monkeypatch.setattr(LayerAlignment, "forward", forward)
    assert main(command.split()[1:-1] + ["stage1.lr=1e-4"]) == 0
    assert json.loads((stage_dir / "done.json").read_text())["steps"] == 16
    assert yaml.safe_load((out / "config.yaml").read_text())["stage1"]["lr"] == 1e-4


def test_export_resume_of_a_finished_export_says_so_without_loading_the_teacher(tmp_path, capsys, monkeypatch):
    """`hypenet export --resume` where the export is done loaded the teacher (slow, and its memory) before finding
    nothing to do. It says at once, as convert does of a finished conversion, that it is finished and where its model
    is, and exits 0; without --resume the refusal says so too (not "exists; pass --resume")."""
    def no_loading(*args, **kwargs):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(pipeline, "Conversion", no_loading)
    out = tmp_path / "run"
    for name in pipeline.STAGES:
        (out / "stages" / name).mkdir(parents=True)
        (out / "stages" / name / "done.json").write_text("{}")
    (out / "report.json").write_text(json.dumps({"student_path": str(out / "model")}))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    finished = f"{out} holds a finished conversion (its model: {out / 'model'})"
    assert main(["export", "--out", str(out), "--resume"]) == 0
    assert capsys.readouterr().out == f"{finished}: its export is done, nothing to do (--overwrite exports it again)\n"
    assert run_stages(load_config(out=str(out)), ["export"], resume=True) == {"student_path": str(out / "model")}
    assert main(["export", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {finished}; --overwrite exports it again\n"
    assert main(["convert", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {finished}; pass another --out, or --overwrite to convert again\n"
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # (no lock, nothing written)


def test_a_stage_alone_needs_the_stages_before_it(tmp_path, capsys):
    assert main(["stage2", "--out", str(tmp_path / "out")]) == 2
    assert "run `hypenet stage1 --out" in capsys.readouterr().err


def test_stage3_export_and_a_finished_resume_load_no_teacher_weight(assets, qwen3_conversion, tmp_path, monkeypatch):
    """Every invocation loaded the teacher's weights, also one whose stages need only its tokenizer and config (stage
    3, the export, `convert --resume` of a finished conversion): minutes and its memory for a large teacher. They
    build it on the meta device instead; the report's teacher size is the loaded teacher's, and a stage that runs the
    teacher still loads it. `convert --resume` of a finished conversion reads no data either: it writes the same
    report again."""
    reference, report = qwen3_conversion
    loaded = []
    real = pipeline.load_teacher

    def recorded(*args, **kwargs):
        loaded.append(kwargs.get("weights", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "load_teacher", recorded)
    out = tmp_path / "branch"
    shutil.copytree(reference, out)
    config = tiny_config(assets, "qwen3", out)
    again = run_stages(config, ["stage3", "export"], overwrite=True)
    assert again["teacher_parameters"] == report["teacher_parameters"]

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read")

    with monkeypatch.context() as patched:  # (nor does it read and tokenise the data: the report needs none of it)
        patched.setattr("hypenet.data.tokenize_corpus", no_data)
        resumed = run_stages(config, list(pipeline.STAGES), resume=True)
    assert resumed["teacher_parameters"] == report["teacher_parameters"]
    assert resumed == json.loads((out / "report.json").read_text())
    assert loaded == [False, False]
    assert pipeline.needs_teacher(out, ["stage2", "stage3"], overwrite=True)
    assert not pipeline.needs_teacher(out, ["stage2", "stage3"], overwrite=False)
    shutil.rmtree(out / "stages" / "stage2")
    assert pipeline.needs_teacher(out, ["stage2", "stage3"], overwrite=False)
    for family in ("qwen3", "llama"):  # (the tiny Qwen3 ties its embeddings: counted once either way)
        model, _ = real(assets[family])
        skeleton, _ = real(assets[family], weights=False)
        assert skeleton.device.type == "meta" and skeleton.config.to_dict() == model.config.to_dict()
        assert sum(p.numel() for p in skeleton.parameters()) == sum(p.numel() for p in model.parameters())


def test_export_again_with_one_base_pins_it(qwen3_conversion, tmp_path):
    """docs/EVAL.md: `hypenet export --out RUN --set 'export.logit_scaling_candidates=[A]' --overwrite` writes the
    checkpoint with base A (its loss measured and reported, no search past it), the trained stages untouched."""
    reference, _ = qwen3_conversion
    out = tmp_path / "again"
    shutil.copytree(reference, out)
    weights = load_file(out / "stages" / "stage3" / "model" / "model.safetensors")
    assert main(["export", "--out", str(out), "--set", "export.logit_scaling_candidates=[300]", "--overwrite"]) == 0
    assert json.loads((out / "model" / "config.json").read_text())["attention_logit_scaling_base"] == 300
    report = json.loads((out / "report.json").read_text())
    assert report["export"]["logit_scaling_base"] == 300 and list(report["export"]["losses"]) == ["300"]
    assert report["stages"] == json.loads((reference / "report.json").read_text())["stages"]
    exported = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(exported[name], tensor) for name, tensor in weights.items())


def test_export_again_with_a_tolerance_writes_the_smallest_near_base(qwen3_conversion, tmp_path, monkeypatch):
    """`hypenet export --out RUN --set export.logit_scaling_tolerance=T --overwrite`: the same search, and the base
    written is the smallest whose loss is within T of the lowest. (The loss per base is made up, as the fortieth
    lease's shape: the tiny student's own falls all the way to the smallest base, where no tolerance moves it.)"""
    from hypenet.halo import export as export_module

    made_up = {50.0: 1.0009, 500.0: 1.0, 5000.0: 1.02}
    monkeypatch.setattr(export_module, "long_context_loss",
                        lambda model, docs, scored_from, device, by_band=None:
                        made_up[model.config.attention_logit_scaling_base])
    reference, _ = qwen3_conversion
    out = tmp_path / "again"
    shutil.copytree(reference, out)
    grid = ["--set", "export.logit_scaling_candidates=[50,500,5000]", "--set", "export.logit_scaling_extend=0"]
    assert main(["export", "--out", str(out), *grid, "--set", "export.logit_scaling_tolerance=0.001",
                 "--overwrite"]) == 0
    export = json.loads((out / "report.json").read_text())["export"]
    assert export["losses"] == {"50": 1.0009, "500": 1.0, "5000": 1.02} and export["tolerance"] == 0.001
    assert export["lowest_loss_base"] == 500 and export["logit_scaling_base"] == 50
    assert json.loads((out / "model" / "config.json").read_text())["attention_logit_scaling_base"] == 50
    assert "within 0.1% of the lowest" in (out / "report.md").read_text()


def test_export_again_with_the_copy_probe(qwen3_conversion, tmp_path):
    """`hypenet export --out RUN --set export.copy_probe=N --set export.logit_scaling_tolerance=T --overwrite`: the
    same losses as the conversion's own export, the far-copy loss of every base beside them, and the base written
    is the near one that copies best."""
    from hypenet.halo.export import best_copy_within

    reference, _ = qwen3_conversion
    out = tmp_path / "again"
    shutil.copytree(reference, out)
    assert main(["export", "--out", str(out), "--set", "export.copy_probe=2", "--set", "export.copy_probe_span=8",
                 "--set", "export.logit_scaling_tolerance=0.5", "--overwrite"]) == 0
    export = json.loads((out / "report.json").read_text())["export"]
    before = json.loads((reference / "report.json").read_text())["export"]
    assert export["losses"] == before["losses"] and export["copy_probe"] == {"copies": 2, "span": 8}
    assert list(export["copy_losses"]) == list(export["losses"])
    number = {label: None if label == "off" else float(label) for label in export["losses"]}
    losses = {number[label]: loss for label, loss in export["losses"].items()}
    copied = {number[label]: loss for label, loss in export["copy_losses"].items()}
    assert export["logit_scaling_base"] == best_copy_within(losses, copied, 0.5)
    assert json.loads((out / "model" / "config.json").read_text())["attention_logit_scaling_base"] == \
        export["logit_scaling_base"]
    assert "far-copy loss" in (out / "report.md").read_text()


def test_a_stage_stopped_before_its_first_checkpoint_may_change_its_settings(tmp_path):
    """Out of memory at step 1 ("shorten stage1.seq_len, then rerun with --resume"): the stage left its folder and
    loss log but no checkpoint, so a resume starts it again and may take another seq_len, even another teacher; once
    it has a checkpoint (or is done), its settings and the teacher are kept."""
    from hypenet.halo.config import save_config

    out = tmp_path / "run"
    saved = load_config("smoke", teacher="some/teacher")
    (out / "stages" / "stage1").mkdir(parents=True)
    save_config(saved, out / "config.yaml")
    (out / "stages" / "stage1" / "losses.jsonl").write_text('{"event": "micro_batch", "step": 1}\n')
    shorter = load_config("smoke", overrides=["stage1.seq_len=32"], teacher="other/teacher")
    assert pipeline.saved_settings_refusal(out, shorter) is None
    (out / "stages" / "stage1" / "checkpoints" / "step-00000002").mkdir(parents=True)
    assert "other settings for teacher, stage1.seq_len" in pipeline.saved_settings_refusal(out, shorter)
    shutil.rmtree(out / "stages" / "stage1" / "checkpoints")
    (out / "stages" / "stage1" / "done.json").write_text("{}")
    assert "other settings for teacher, stage1.seq_len" in pipeline.saved_settings_refusal(out, shorter)


def test_a_resume_may_set_or_drop_the_teacher_the_manual_layers_are_for(tmp_path):
    """select.manual_teacher only checks a config before it runs: a run whose selection is done, begun without it (as
    before the setting), resumes with it (configs/gpu-smollm2.yaml sets it), and the other way round; the layers
    themselves stay as they were chosen."""
    from hypenet.halo.config import save_config

    out = tmp_path / "run"
    manual = ["select.strategy=manual", "select.manual_layers=1,3"]
    (out / "stages" / "select").mkdir(parents=True)
    (out / "stages" / "select" / "done.json").write_text("{}")
    checked = load_config("smoke", overrides=[*manual, "select.manual_teacher=embedded"])
    save_config(load_config("smoke", overrides=manual), out / "config.yaml")
    assert pipeline.saved_settings_refusal(out, checked) is None
    save_config(checked, out / "config.yaml")
    assert pipeline.saved_settings_refusal(out, load_config("smoke", overrides=manual)) is None
    other = load_config("smoke", overrides=["select.strategy=manual", "select.manual_layers=1,2"])
    assert "with other settings for select.manual_layers (see" in pipeline.saved_settings_refusal(out, other)


def test_halo_chooses_over_a_config_that_sets_manual_layers(qwen3_conversion, tmp_path):
    """`--config configs/gpu-smollm2.yaml --set select.strategy=halo`: the file's select.manual_layers are for strategy
    manual; HALO's selection leaves them out and chooses as it does without them."""
    reference_out, _ = qwen3_conversion
    out = tmp_path / "run"
    copy_done_stages(reference_out, out, "stage1")
    assert main(["select", "--out", str(out), "--set", "select.manual_layers=1,3"]) == 0
    assert read_config(out / "config.yaml").select.manual_layers == [1, 3]
    done, reference = (json.loads((run_dir / "stages" / "select" / "done.json").read_text())
                       for run_dir in (out, reference_out))
    assert (done["strategy"], done["attention_layers"]) == ("halo", reference["attention_layers"])


def test_the_needle_strategy_keeps_the_layers_where_the_teacher_finds_the_needle(assets, tmp_path, capsys):
    """`hypenet select --set select.strategy=needle`: no stage 1 needed (HALO's strategy still asks for it); done.json
    keeps each layer's share of the attention on the needle, and the layers kept are those with the largest shares
    (one quarter of the 4)."""
    needle = ["--set", "select.strategy=needle", "--set", "select.recall_samples=5", "--set",
              "select.recall_context=512"]
    out = tmp_path / "run"
    assert main(["select", *cli_args(assets, "qwen3", tmp_path / "halo")]) == 2
    assert "select needs the result of stage1" in capsys.readouterr().err
    assert main(["select", *cli_args(assets, "qwen3", out), *needle]) == 0
    assert not (out / "stages" / "stage1").exists()
    done = json.loads((out / "stages" / "select" / "done.json").read_text())
    shares = {int(i): v for i, v in done["needle_attention"].items()}
    assert done["strategy"] == "needle" and sorted(shares) == [0, 1, 2, 3]
    assert done["attention_layers"] == [max(shares, key=shares.get)]
    assert done["settings"]["probes"] == "niah single_2" and done["settings"]["recall_context"] == 512
    assert "finds the NIAH-Single-2 prompts' needles most in layers" in (out / "report.md").read_text()
    # prompts too short for Single-2's template: said before anything trains, with the setting to raise
    short = tmp_path / "short"
    assert main(["convert", *cli_args(assets, "qwen3", short), *needle, "--set", "select.recall_context=64"]) == 2
    assert capsys.readouterr().err.strip().endswith("raise select.recall_context, the prompts' length")
    assert not (short / "stages" / "stage1").exists()


def test_resume_refuses_other_settings(assets, qwen3_conversion, capsys):
    out, _ = qwen3_conversion
    assert main(["convert", *cli_args(assets, "qwen3", out), "--resume", "--set", "stage2.lr=5e-4"]) == 2
    assert "other settings for stage2.lr" in capsys.readouterr().err


def test_a_stage_from_another_conversion_branches_it(assets, qwen3_conversion, tmp_path, capsys):
    """`hypenet stage3 --from A --out B --set stage3.lr=...`: B gets A's finished stages 1-2 and settings, trains its
    own stage 3 from A's stage 2 (the same first loss, then another course) and exports; A is left as it was. Settings
    of the copied stages cannot change, and B must not hold stages of another conversion."""
    reference, _ = qwen3_conversion
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*")}
    branch = tmp_path / "branch"
    assert main(["stage3", "--from", str(reference), "--out", str(branch), "--set", "stage3.lr=5e-4"]) == 0
    assert main(["export", "--out", str(branch)]) == 0
    for name in ("stage1", "select", "stage2"):
        assert (branch / "stages" / name / "done.json").read_text() == \
            (reference / "stages" / name / "done.json").read_text()
    ours, theirs = (read_losses(out / "stages" / "stage3") for out in (branch, reference))
    assert ours[0]["loss"] == theirs[0]["loss"] and ours[-1]["loss"] != theirs[-1]["loss"]
    config, reference_config = (yaml.safe_load((out / "config.yaml").read_text()) for out in (branch, reference))
    assert config["stage3"]["lr"] == 5e-4 and reference_config["stage3"]["lr"] != 5e-4
    assert config["stage2"] == reference_config["stage2"] and config["teacher"] == reference_config["teacher"]
    report = json.loads((branch / "report.json").read_text())
    assert report["stages"]["stage2"] == json.loads((reference / "report.json").read_text())["stages"]["stage2"]
    assert (branch / "model" / "config.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*")} == before
    # run again with --resume: the branch is there, nothing is copied or trained again
    assert main(["stage3", "--from", str(reference), "--out", str(branch), "--resume"]) == 0
    assert read_losses(branch / "stages" / "stage3") == ours
    capsys.readouterr()

    refusals = [
        (["stage3", "--from", str(reference), "--out", str(tmp_path / "other"), "--set", "stage2.lr=1e-2"],
         "its stage1, select, stage2 were run with other settings for stage2.lr"),
        (["stage3", "--from", str(tmp_path / "nothing"), "--out", str(tmp_path / "other")], "no conversion there"),
        (["stage3", "--from", str(reference), "--out", str(reference)], "leave out --from to continue"),
    ]
    for args, message in refusals:
        assert main(args) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    unfinished = tmp_path / "unfinished"  # A's stage 2 not done
    copy_done_stages(reference, unfinished, "stage1", "select")
    assert main(["stage3", "--from", str(unfinished), "--out", str(tmp_path / "other")]) == 2
    assert "its stage2 is not finished; finish it there first" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere"  # B holds a stage 2 of its own
    copy_done_stages(reference, elsewhere, "stage1", "select", "stage2")
    (elsewhere / "stages" / "stage2" / "done.json").write_text(json.dumps({"steps": 1}))
    assert main(["stage3", "--from", str(reference), "--out", str(elsewhere)]) == 2
    assert "already holds a finished stage2 that is not the one in" in capsys.readouterr().err


def test_attention_rope_keeps_the_teachers_rope_in_the_attention_layers(assets, tmp_path):
    """attention_rope=true (an ablation, not HypeNet): stage 2 builds the student with RoPE in its attention layers,
    and the saved student says so (stage 3 and the export load that config); align_attention is refused with it."""
    from hypenet.model import HypeNetForCausalLM

    with pytest.raises(HaloError, match="nothing to fit"):
        run_stages(tiny_config(assets, "qwen3", tmp_path / "both", "attention_rope=true",
                               "stage1.align_attention=true"), ["stage1"])
    out = tmp_path / "rope"
    config = tiny_config(assets, "qwen3", out, "attention_rope=true", "select.strategy=manual",
                         "select.manual_layers=2", "stage2.tokens=512", "stage2.lr=1e-12", "stage2.min_lr=1e-12")
    run_stages(config, ["stage1", "select", "stage2"])
    student = HypeNetForCausalLM.from_pretrained(out / "stages" / "stage2" / "model")
    assert student.config.attention_rope is True and student.config.mixer_types[2] == "attention"
    assert load_config("smoke").attention_rope is False  # HypeNet's default: NoPE attention


def test_stage1_can_align_the_attention_that_stage2_keeps(assets, tmp_path):
    """stage1.align_attention: each layer also gets an attention student (NoPE, new output gate) fit by MSE, and
    stage 2 starts its attention layers from them."""
    from hypenet.halo.stage1 import ATTENTION_LAYERS_FILE, LAYERS_FILE
    from hypenet.model import HypeNetForCausalLM
    from hypenet.teachers import load_teacher

    out = tmp_path / "aligned"
    config = tiny_config(assets, "qwen3", out, "stage1.align_attention=true", "select.strategy=manual",
                         "select.manual_layers=2", "stage2.tokens=512", "stage2.lr=1e-12", "stage2.min_lr=1e-12")
    run_stages(config, ["stage1", "select", "stage2"])
    stage1_dir = out / "stages" / "stage1"
    attention, lightning = (load_file(str(stage1_dir / name)) for name in (ATTENTION_LAYERS_FILE, LAYERS_FILE))
    assert {k.split(".")[0] for k in attention} == {k.split(".")[0] for k in lightning} == {"0", "1", "2", "3"}
    assert "2.g_proj.weight" in attention and not any("rotary" in k for k in attention)
    losses = [r["loss"] for r in read_losses(stage1_dir) if "loss" in r]
    assert losses[-1] < losses[0]

    teacher, _ = load_teacher(assets["qwen3"])
    q_teacher = teacher.model.layers[2].self_attn.q_proj.weight
    assert (attention["2.q_proj.weight"] - q_teacher).abs().max() > 1e-4  # stage 1 trained it
    # stage 2 (at a negligible learning rate) starts attention layer 2 from it, not from the teacher
    student = HypeNetForCausalLM.from_pretrained(out / "stages" / "stage2" / "model")
    assert student.config.mixer_types[2] == "attention"
    for name, value in student.model.layers[2].self_attn.state_dict().items():
        assert torch.allclose(value, attention[f"2.{name}"], atol=1e-6), name


def test_repeat_spans_reach_the_chunks_of_stages_2_and_3_only():
    """data.repeat_spans: stage 1 aligns attention outputs on the text as cut; stages 2 and 3 get the repeated spans."""
    from types import SimpleNamespace

    import numpy as np

    from hypenet.halo.pipeline import Conversion

    config = load_config(overrides=["data.repeat_spans=0.25", "stage1.seq_len=64", "stage2.seq_len=128",
                                    "stage3.seq_len=256"])
    conversion = SimpleNamespace(config=config, corpus=SimpleNamespace(train_tokens=np.arange(4096, dtype=np.uint32)))
    chunks = {name: Conversion.chunks(conversion, name) for name in ("stage1", "stage2", "stage3")}
    assert [chunks[name].repeat_spans for name in ("stage1", "stage2", "stage3")] == [0.0, 0.25, 0.25]
    assert [chunks[name].seq_len for name in ("stage1", "stage2", "stage3")] == [64, 128, 256]
    assert [chunks[name].repeat_numbers for name in ("stage1", "stage2", "stage3")] == [0.0, 0.0, 0.0]


def character_chunks(characters: str, overrides: list[str]) -> dict:
    """Each stage's PackedChunks of a conversion with `overrides` (stages 2-3 on 256-token chunks) over the tokens
    100-4195, its tokenizer one token per character, character i of `characters` token 1 + i (anything else 0)."""
    from hypenet.halo.pipeline import Conversion

    words = Tokenizer(models.WordLevel({"[UNK]": 0, **{c: 1 + i for i, c in enumerate(characters)}}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]")
    config = load_config(overrides=[*overrides, "stage2.seq_len=256", "stage3.seq_len=256"])
    tokens = np.arange(100, 4196, dtype=np.uint32)  # no character's id among them
    conversion = SimpleNamespace(config=config, tokenizer=tokenizer, corpus=SimpleNamespace(train_tokens=tokens))
    return {name: Conversion.chunks(conversion, name) for name in ("stage1", "stage2", "stage3")}


def test_repeat_numbers_reach_stages_2_and_3_tokenized_by_the_teachers_tokenizer():
    """data.repeat_numbers: of the chunks with a repeated span, that share get a made-up number, written in the
    teacher tokenizer's ids; stage 1 gets none."""
    chunks = character_chunks("0123456789", ["data.repeat_spans=1", "data.repeat_numbers=1"])
    assert [chunks[name].repeat_numbers for name in ("stage1", "stage2", "stage3")] == [0.0, 1.0, 1.0]
    for row in next(chunks["stage2"].batches(4)).numpy():
        digits = row[(row >= 1) & (row <= 10)]
        assert 10 <= len(digits) <= 20 and len(digits) % 2 == 0  # a number of 5-10 digits, written twice
        assert np.array_equal(digits[:len(digits) // 2], digits[len(digits) // 2:]) and digits[0] != 1  # not "0"
    assert not any(((row >= 1) & (row <= 10)).any() for row in next(chunks["stage1"].batches(4)).numpy())
    chunks = character_chunks("0123456789", ["data.repeat_spans=1", "data.repeat_numbers=1", "data.number_decoys=3"])
    assert [chunks[name].number_decoys for name in ("stage1", "stage2", "stage3")] == [0, 3, 3]
    rows = next(chunks["stage2"].batches(4)).numpy()
    assert all(((row >= 1) & (row <= 10)).sum() > 20 for row in rows)  # the number twice and decoys of its length


def test_repeat_uuids_reach_stages_2_and_3_tokenized_by_the_teachers_tokenizer():
    """data.repeat_uuids: a share of the chunks with a repeated span get a made-up UUID in the teacher tokenizer's
    ids, written twice; stage 1 gets none."""
    characters = "0123456789abcdef-"
    chunks = character_chunks(characters, ["data.repeat_spans=1", "data.repeat_uuids=1"])
    assert [chunks[name].repeat_uuids for name in ("stage1", "stage2", "stage3")] == [0.0, 1.0, 1.0]
    for row in next(chunks["stage3"].batches(4)).numpy():
        ids = row[(row >= 1) & (row <= len(characters))]
        text = "".join(characters[i - 1] for i in ids)
        assert len(text) == 2 * 36 and text[:36] == text[36:]  # 36 characters (the space: unknown), written twice
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", text[:36])
    assert not any(((row >= 1) & (row <= len(characters))).any() for row in next(chunks["stage1"].batches(4)).numpy())


@pytest.mark.parametrize("overrides, split_seed", [(["seed=1"], 1), (["seed=1", "data.seed=0"], 0)])
def test_data_seed_fixes_the_split_while_seed_changes_the_training(overrides, split_seed, monkeypatch):
    """data.seed decides the held-out split (and which paragraphs are joined); `seed` alone then changes only the
    training: the chunks' order, the repeated spans, the new weights' initialisation."""
    import contextlib
    from types import SimpleNamespace

    import numpy as np

    import hypenet.data
    from hypenet.halo.pipeline import Conversion

    calls = []
    monkeypatch.setattr(hypenet.data, "tokenize_corpus", lambda source, tokenizer, **kwargs: calls.append(kwargs) or
                        SimpleNamespace(train_tokens=np.arange(4096, dtype=np.uint32), heldout_docs=[np.arange(9)]))
    config = load_config("cpu", overrides=overrides + ["stage2.seq_len=128"])
    conversion = SimpleNamespace(config=config, tokenizer=None,
                                 state=SimpleNamespace(main_process_first=contextlib.nullcontext))
    conversion.corpus = Conversion.corpus.func(conversion)
    assert calls[0]["seed"] == split_seed
    assert Conversion.chunks(conversion, "stage2").seed == 1


def test_resume_from_another_directory_and_another_micro_batch(assets, qwen3_conversion, tmp_path, monkeypatch,
                                                                capsys):
    """A conversion's config.yaml finds its teacher and data from any directory, `./qwen3` and `qwen3` are one teacher,
    and a resumed stage may take another micro batch size (what its out-of-memory error asks for); another teacher is
    still refused."""
    reference, _ = qwen3_conversion
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    root = assets["root"]
    monkeypatch.chdir(root)
    relative = ["--teacher", "./qwen3", "--data", "data.jsonl"]
    assert main(["convert", "--out", str(out), "--resume", *relative, "--set", "stage2.micro_batch_size=2"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["teacher"], saved["data"]["source"]) == (str(root / "qwen3"), str(root / "data.jsonl"))
    assert saved["stage2"]["micro_batch_size"] == 2
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "--out", "run", "--resume"]) == 0  # the saved teacher and data, from elsewhere
    capsys.readouterr()
    monkeypatch.chdir(root)
    assert main(["convert", "--out", str(out), "--resume", "--teacher", "llama"]) == 2
    assert "other settings for teacher" in capsys.readouterr().err


def test_sigterm_outside_training_ends_as_ctrl_c_does(tmp_path, capsys, monkeypatch):
    """SIGTERM during the layer choice or the export killed the process with no word (exit -15); it now ends as
    Ctrl-C does, with the hint and exit code 130, and the handler before it is put back."""
    from hypenet.halo import pipeline

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # (the signal arrives before this ends)

    monkeypatch.setattr(pipeline, "run_stages", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["select", "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err.strip() == "interrupted before anything was saved; run the same command again"
    assert signal.getsignal(signal.SIGTERM) is before
