"""`hypenet convert --plan`: budgets, FLOPs and the state of --out, computed without weights and writing nothing."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from hypenet.cli import main
from hypenet.halo.config import HaloError, load_config, resolve
from hypenet.halo.flops import H200_DENSE_BF16_TFLOPS, build_objective, matmul_parameters
from hypenet.halo.plan import MEASURED_MFU, _count, _flops, logged_progress, make_plan, markdown
from hypenet.teachers import build_hypenet_from_teacher
from hypenet.units import duration_label

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["stage1.tokens=4096", "stage2.tokens=8192", "stage2.batch_size=2", "stage3.tokens=4096", "stage3.seq_len=1024",
         "stage3.batch_size=2"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A config-only Qwen3 teacher folder: the plan reads no weights, so it needs none."""
    path = tmp_path_factory.mktemp("plan") / "qwen3"
    Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=4096).save_pretrained(path)
    return path


def config_for(teacher_dir, out, *extra):
    return load_config(overrides=[*SMALL, *extra], teacher=str(teacher_dir), out=str(out))


def test_the_plan_counts_what_the_stages_would_build_from_real_weights(teacher_dir, tmp_path):
    out = tmp_path / "run"
    plan = make_plan(config_for(teacher_dir, out))
    torch.manual_seed(0)
    teacher = Qwen3ForCausalLM(Qwen3Config.from_pretrained(teacher_dir))  # real weights this time
    n = sum(p.numel() for p in teacher.parameters())
    resolved = resolve(config_for(teacher_dir, out), n)
    mixers = ["attention"] * 2 + ["lightning"] * 6  # floor(8 / 4) attention layers
    student = build_hypenet_from_teacher(teacher, mixers, lightning_layers=None)
    assert plan["teacher"]["parameters"] == n and plan["student"]["parameters"] == sum(
        p.numel() for p in student.parameters())
    assert plan["student"]["attention_layers"] == 2
    assert plan["teacher"]["kv_cache_bytes_per_token"] == 8 * 2 * 2 * 16 * 2
    assert plan["student"]["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 16 * 2
    assert plan["student"]["rnn_state_bytes"] == 6 * 4 * 16 * 16 * 4
    by_stage = {row["stage"]: row for row in plan["stages"]}
    for name in ("stage1", "stage2", "stage3"):
        stage = getattr(resolved, name)
        _, terms = build_objective(name, teacher, mixers, resolved)
        row = by_stage[name]
        assert (row["tokens"], row["steps"], row["lr"]) == (stage.tokens, stage.steps(), stage.lr)
        assert row["flops"] == stage.tokens * sum(factor * count for _, factor, count in terms)
        assert row["h200_hours"] == pytest.approx(row["flops"] / (row["mfu"] * H200_DENSE_BF16_TFLOPS * 1e12) / 3600)
        assert row["state"] == "to run"
    assert by_stage["stage2"]["flops"] == 8192 * (2 * matmul_parameters(teacher) + 6 * matmul_parameters(student))
    teacher_bytes = n * (4 if plan["on_cpu"] else 2)  # the frozen teacher: fp32 on a CPU, bf16 on a GPU
    student_bytes = sum(p.numel() for p in student.parameters()) * 16  # fp32 weights, gradients, AdamW's moments
    assert by_stage["stage2"]["static_bytes"] == student_bytes + teacher_bytes
    assert by_stage["stage3"]["static_bytes"] == student_bytes
    assert plan["mfu_measured_at"] == min(MEASURED_MFU)  # a tiny teacher is nearest the 135M measurement
    assert [row["mfu"] for row in plan["stages"]] == list(MEASURED_MFU[min(MEASURED_MFU)][False])
    assert plan["total"]["flops"] == sum(row["flops"] for row in plan["stages"])
    assert plan["refusal"] is None and not out.exists()


def test_stage1_flops_count_the_attention_students_when_they_are_aligned(teacher_dir, tmp_path):
    plain = make_plan(config_for(teacher_dir, tmp_path / "a"))["stages"][0]["flops"]
    aligned = make_plan(config_for(teacher_dir, tmp_path / "a", "stage1.align_attention=true"))["stages"][0]["flops"]
    teacher = Qwen3ForCausalLM(Qwen3Config.from_pretrained(teacher_dir))
    objective, _ = build_objective("stage1", teacher, [], config_for(teacher_dir, tmp_path / "a",
                                                                    "stage1.align_attention=true"))
    assert aligned - plain == 4096 * 6 * matmul_parameters(objective.attention_students)


def test_the_plan_reads_what_out_holds(teacher_dir, tmp_path):
    out = tmp_path / "run"
    (out / "stages" / "stage1").mkdir(parents=True)
    (out / "stages" / "stage1" / "done.json").write_text(json.dumps({"steps": 1, "tokens": 4096}))
    (out / "stages" / "select").mkdir()
    (out / "stages" / "select" / "done.json").write_text(json.dumps({}))
    (out / "stages" / "stage2" / "checkpoints" / "step-00000005").mkdir(parents=True)
    (out / "stages" / "stage2" / "checkpoints" / "step-00000006.tmp").mkdir()  # a half-written one is not counted
    config = config_for(teacher_dir, out)
    plan = make_plan(config)
    states = {row["stage"]: row["state"] for row in plan["stages"]}
    assert states == {"stage1": "done (1 step)", "stage3": "to run",
                      "stage2": "started; checkpoint at step 5: --resume continues from there"}
    log = out / "stages" / "stage2" / "losses.jsonl"
    rows = [{"event": "resume", "step": 3}] + [{"step": i, "loss": 1.0, "seconds": t} for i, t in
                                                 zip(range(1, 7), [9.0, 1.0, 2.0, 2.0, 2.0, 3.0])]
    log.write_text("".join(json.dumps(row) + "\n" for row in rows))
    stage2 = make_plan(config)["stages"][1]["state"]
    assert stage2.startswith("logged step 6 of 8 ") and stage2.endswith(
        " ago; the other 2 at 2 s/step: about 4 s; checkpoint at step 5: --resume continues from there")
    assert logged_progress(out / "stages" / "stage2", 8, now=log.stat().st_mtime + 150) == (
        "logged step 6 of 8 2 min ago; the other 2 at 2 s/step: about 4 s")
    assert plan["selection_state"] == "done" and plan["export_state"] == "to run"
    assert plan["refusal"] == f"{out} exists; pass --resume to continue it or --overwrite to replace it"
    assert "**As asked, this run would stop at once:**" in markdown(plan)
    assert make_plan(config, resume=True)["refusal"] is None
    assert make_plan(config, ["stage3"], resume=True)["refusal"] == (
        f"stage3 needs the result of stage2 in {out}: run `hypenet stage2 --out {out}` first, with your --teacher, "
        "--data and --set options (or `hypenet convert` for everything)")
    only = make_plan(config, ["stage2"], resume=True)
    assert only["planned"] == ["stage2"] and only["total"]["flops"] == only["stages"][1]["flops"]
    again = make_plan(config, ["select"], overwrite=True)  # what --overwrite would replace says so
    assert [row["state"] for row in again["stages"]][::2] == ["done (1 step)", "to run"]
    assert again["selection_state"] == "to run again: --overwrite replaces it (done)"
    assert again["stages"][1]["state"].startswith("to run again: --overwrite replaces it (logged step 6 of 8 ")
    assert "| stage1 (not run by this command) |" in markdown(only)


def test_the_plan_says_how_far_a_stopped_layer_selection_got(teacher_dir, tmp_path):
    out = tmp_path / "run"
    (out / "stages" / "stage1").mkdir(parents=True)
    (out / "stages" / "stage1" / "done.json").write_text(json.dumps({"steps": 1, "tokens": 4096}))
    (out / "stages" / "select").mkdir()
    assert make_plan(config_for(teacher_dir, out))["selection_state"] == (
        "started; no checkpoint yet: --resume starts it again")
    (out / "stages" / "select" / "scored_layers.json").write_text(json.dumps(
        {"fingerprint": {}, "num_layers": 8, "recall": {"0": 0.5, "1": 0.25, "2": 0.5}, "commonsense": {}}))
    assert make_plan(config_for(teacher_dir, out))["selection_state"] == (
        "started; 3 of 8 layers scored: --resume goes on from there (with the same settings)")


def test_convert_plan_prints_and_writes_nothing(teacher_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["convert", "--plan", "--teacher", str(teacher_dir), "--out", str(out),
                 *[arg for pair in SMALL for arg in ("--set", pair)]]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"# Plan: {teacher_dir} -> HypeNet in {out}\n")
    assert "- student: " in printed and "2 of 8 layers keep attention" in printed
    assert "| stage2 | 8.19K | 512 | 2 (auto) | 8 | " in printed
    assert not out.exists()
    on_cpu = "This run would train on the CPU (`device`, or no GPU visible): the H200 times do not apply to it."
    assert (on_cpu in printed) == (not torch.cuda.is_available())
    assert main(["convert", "--plan", "--teacher", str(teacher_dir), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert on_cpu in printed
    # ... with what the CPU's own measured rate makes of the FLOPs: a bound, here faked at 1 GFLOP/s
    monkeypatch.setattr("hypenet.halo.plan.cpu_matmul_tflops", lambda: 1e-3)
    plan = make_plan(config_for(teacher_dir, out, "device=cpu"))
    seconds = plan["total"]["flops"] / 1e9
    assert plan["cpu_matmul_tflops"] == 1e-3 and (
        f"At this CPU's fp32 matmul rate, measured now (1 GFLOP/s), its {_flops(plan['total']['flops'])} take at least "
        f"{duration_label(seconds)}; a training step runs well below that rate, so expect several times longer (and a "
        "rate measured while other work shares the CPU is too low: the bound then too high).") in markdown(plan)


def test_the_plan_refuses_an_unsupported_or_missing_teacher(tmp_path, capsys):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(HaloError, match="cannot read the teacher's config .*teacher architecture 'gpt2'"):
        make_plan(load_config(teacher=str(gpt2), out=str(tmp_path / "run")))
    assert main(["convert", "--plan", "--teacher", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {tmp_path / 'missing'} does not exist")


def test_the_gpu_recipe_on_another_teacher_stops_before_its_config_is_looked_up(tmp_path, capsys, monkeypatch):
    """configs/gpu-smollm2.yaml's manual layers are SmolLM2's (select.manual_teacher): --plan (and a run) with another
    teacher ends on the error that says what to set, before the hub is asked for the teacher's config."""
    from hypenet.halo import plan as plan_module

    def no_lookup(spec):
        raise AssertionError(f"looked up {spec}")

    monkeypatch.setattr(plan_module, "hub_config", no_lookup)
    monkeypatch.setattr(plan_module, "resolve_teacher", no_lookup)
    gpu = str(Path(__file__).parents[1] / "configs" / "gpu-smollm2.yaml")
    out = tmp_path / "run"
    assert main(["convert", "--plan", "--config", gpu, "--teacher", "Qwen/Qwen3-1.7B", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: select.manual_layers [17, 20, 21, 22, 23, 24, 26] were chosen for the teacher 'embedded' "
        "(select.manual_teacher), not for 'Qwen/Qwen3-1.7B': let HALO choose with --set select.strategy=halo, find "
        "where this teacher's attention finds the needle with --set select.strategy=needle, or keep these layers with "
        "--set select.manual_teacher=Qwen/Qwen3-1.7B")
    assert not out.exists()


def test_a_plan_whose_run_would_stop_is_printed_whole_and_exits_2(teacher_dir, tmp_path, capsys):
    """A script can tell from --plan's exit code that the run, as asked, would stop: an --out that is a file, data
    that is not there (the run would stop only after loading the teacher), a finished conversion."""
    small = [arg for pair in SMALL for arg in ("--set", pair)]
    taken = tmp_path / "afile"
    taken.write_text("")
    assert main(["convert", "--plan", "--teacher", str(teacher_dir), "--out", str(taken), *small]) == 2
    printed = capsys.readouterr().out
    assert printed.startswith(f"# Plan: {teacher_dir} -> HypeNet in {taken}\n")
    assert printed.endswith(f"**As asked, this run would stop at once:** --out {taken} is a file; pass a folder\n")
    missing = tmp_path / "no-such-corpus"
    assert main(["convert", "--plan", "--teacher", str(teacher_dir), "--out", str(tmp_path / "run"), *small,
                 "--data", str(missing)]) == 2
    printed = capsys.readouterr().out
    assert f"**As asked, this run would stop at once:** the data ({missing}): " in printed
    assert printed.count(str(missing)) >= 2  # also on the data line, as before
    finished = tmp_path / "finished"
    for stage in ("stage1", "select", "stage2", "stage3", "export"):
        (finished / "stages" / stage).mkdir(parents=True)
        (finished / "stages" / stage / "done.json").write_text("{}")
    assert make_plan(config_for(teacher_dir, finished))["refusal"] == (
        f"{finished} holds a finished conversion (its model: {finished / 'model'}); pass another --out, or "
        "--overwrite to convert again")
    assert main(["convert", "--plan", "--teacher", str(teacher_dir), "--out", str(tmp_path / "run"), *small]) == 0


def finish(out: Path, *stages: str) -> None:
    """Mark `stages` done in `out` (the training stages with 4 steps)."""
    for stage in stages:
        (out / "stages" / stage).mkdir(parents=True, exist_ok=True)
        (out / "stages" / stage / "done.json").write_text(json.dumps({"steps": 4} if stage[-1].isdigit() else {}))


def test_export_plan_is_the_exports_own(teacher_dir, tmp_path, capsys):
    """`hypenet export --plan` printed the whole conversion's plan (every stage's budget, "not run by this
    command"); it says what the export alone would do: what it reads and writes, whether --out holds it done, and
    why it would stop, with convert --plan's exit codes (2: the run as asked would stop at once)."""
    out = tmp_path / "run"
    export = ["export", "--plan", "--teacher", str(teacher_dir), "--out", str(out),
              *[arg for pair in SMALL for arg in ("--set", pair)]]
    assert main(export) == 2  # nothing before it
    printed = capsys.readouterr().out
    assert printed.startswith(f"# Plan: hypenet export in {out}\n")
    assert printed.endswith(f"**As asked, this run would stop at once:** export needs the result of stage1 in {out}: "
                            f"run `hypenet stage1 --out {out}` first, with your --teacher, --data and --set options "
                            "(or `hypenet convert` for everything)\n")
    finish(out, "stage1", "select", "stage2", "stage3")
    assert main(export) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert f"- reads: stage 3's model, {out / 'stages' / 'stage3' / 'model'} (stage3: done (4 steps))" in lines
    assert f"- loads: the teacher {teacher_dir}'s tokenizer and config (qwen3, " in printed
    assert "parameters; not its weights)" in printed
    assert ("- scores: the 16 longest held-out documents, cut to 4,096 tokens and scored past stage 3's 1,024, to "
            "choose the logit-scaling base among 100, 200, 500, 1000, 2000") in printed
    assert (f"- writes: {out / 'model'}, {out / 'stages' / 'export' / 'done.json'}, {out / 'report.json'}, "
            f"{out / 'report.md'}") in lines
    assert lines[-1] == "- in --out: export to run"
    assert "| stage" not in printed and "not run by this command" not in printed and "H200" not in printed
    finish(out, "export")
    assert main(export) == 2
    assert capsys.readouterr().out.endswith(
        f"- in --out: export done\n\n**As asked, this run would stop at once:** {out} holds a finished conversion (its "
        f"model: {out / 'model'}); --overwrite exports it again\n")
    assert main([*export, "--overwrite"]) == 0
    assert "- in --out: export to run again: --overwrite replaces it (done)\n" in capsys.readouterr().out
    assert main([*export, "--resume"]) == 0  # the run would do nothing: it reads and writes nothing
    assert capsys.readouterr().out == (
        f"# Plan: hypenet export in {out}\n\n- in --out: export done\n\n{out} holds a finished conversion (its model: "
        f"{out / 'model'}): its export is done, nothing to do (--overwrite exports it again)\n")
    assert sorted(p.name for p in out.iterdir()) == ["stages"]  # (a plan writes nothing)


def test_a_warning_of_the_hubs_client_is_printed_once(teacher_dir, tmp_path):
    """As `hypenet convert` sets up logging, a record of huggingface_hub's (its retries when the hub cannot be
    reached) goes out through its own handler alone, not a second time through the command's."""
    script = textwrap.dedent(f"""
        import logging
        from hypenet.cli import main
        main(["convert", "--plan", "--teacher", {str(teacher_dir)!r}, "--out", {str(tmp_path / "run")!r}])
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        logging.getLogger("hypenet.halo").warning("ours")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("Retrying in 1s [Retry 1/5].") == 1, result.stderr
    assert result.stderr.count("WARNING hypenet.halo: ours") == 1, result.stderr


def test_a_llama_teacher_without_head_dim_in_its_config(tmp_path):
    path = tmp_path / "llama"
    LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=4).save_pretrained(path)
    plan = make_plan(load_config(overrides=SMALL, teacher=str(path), out=str(tmp_path / "run")))
    teacher = LlamaForCausalLM(LlamaConfig.from_pretrained(path))
    assert plan["teacher"]["head_dim"] == 16 and plan["teacher"]["parameters"] == sum(
        p.numel() for p in teacher.parameters())
    assert plan["student"]["attention_layers"] == 1



def test_a_teacher_of_fewer_than_four_layers_keeps_one_attention_layer_as_the_selection_does(tmp_path):
    from hypenet.halo.select import default_num_attention

    path = tmp_path / "three"
    LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=4).save_pretrained(path)
    plan = make_plan(load_config(overrides=SMALL, teacher=str(path), out=str(tmp_path / "run")))
    assert plan["student"]["attention_layers"] == default_num_attention(3) == 1
    assert "1 of 3 layers keep attention" in markdown(plan)


@pytest.mark.parametrize("overrides, message", [
    (["select.num_attention=9"], "select.num_attention must be between 1 and the teacher's 8 layers; got 9"),
    (["select.strategy=even", "select.num_attention=9"], "between 1 and the teacher's 8 layers; got 9"),
    (["select.strategy=manual", "select.manual_layers=2,8"],
     r"attention layer indices \[8\] are out of range: the teacher has layers 0..7"),
])
def test_a_selection_the_teacher_cannot_have_is_refused_by_the_plan(teacher_dir, tmp_path, overrides, message):
    # (the conversion refuses it too: tests/test_halo_pipeline.py)
    with pytest.raises(HaloError, match=message):
        make_plan(config_for(teacher_dir, tmp_path / "run", *overrides))


def test_the_plan_says_when_a_stage_cannot_fit_one_h200(teacher_dir, tmp_path, monkeypatch):
    import hypenet.halo.plan as plan_module

    config = config_for(teacher_dir, tmp_path / "run", "device=cuda")
    plan = make_plan(config)
    assert not plan["on_cpu"] and "even before activations" not in markdown(plan)
    stage2 = plan["stages"][1]["static_bytes"]
    monkeypatch.setattr(plan_module, "H200_GIB", stage2 / 2**30 * 0.99)  # as if the GPU were just too small
    assert ("**stage2 does not fit one H200" in markdown(plan)) and "stage1" not in markdown(plan).split("**")[1]


def test_the_plan_says_how_the_export_will_choose_the_base():
    from hypenet.halo.config import ExportConfig
    from hypenet.halo.plan import export_rule

    assert export_rule(ExportConfig()) == ("the logit-scaling base among 100, 200, 500, 1000, 2000 and up to 4 more "
                                           "past the edge while the loss still falls there; the lowest held-out loss")
    gpu = load_config(files=[Path(__file__).parents[1] / "configs" / "gpu-smollm2.yaml"]).export
    assert export_rule(gpu).endswith("; the smallest base whose loss is within 0.1% of the lowest")
    probed = ExportConfig(logit_scaling_candidates=[None, 8000.0], logit_scaling_extend=0, copy_probe=16)
    assert export_rule(probed) == ("the logit-scaling base among off, 8000; the lowest held-out loss, the far-copy "
                                   "loss of 16 spans per document reported beside it")
    probed.logit_scaling_tolerance = 0.002
    assert export_rule(probed).endswith("; the base with the lowest far-copy loss among those whose loss is within "
                                        "0.2% of the lowest")


def test_the_plan_says_which_settings_run_the_teacher_past_its_window(teacher_dir, tmp_path):
    # teacher_dir's window is 4096 tokens; stage 3 trains without the teacher and is not named
    within = make_plan(config_for(teacher_dir, tmp_path / "run", "stage3.seq_len=8192", "export.eval_len=32768"))
    assert within["beyond_teacher_window"] == [] and "Past the teacher's window" not in markdown(within)
    past = make_plan(config_for(teacher_dir, tmp_path / "run", "stage1.seq_len=4097", "select.recall_context=8192",
                                "stage2.seq_len=8192"))
    assert [w.split(" is longer")[0] for w in past["beyond_teacher_window"]] == [
        "stage1.seq_len=4097", "select.recall_context=8192", "stage2.seq_len=8192"]
    lines = [line for line in markdown(past).splitlines() if line.startswith("**Past the teacher's window:**")]
    assert len(lines) == 3 and all("(4096 tokens, its max_position_embeddings)" in line for line in lines)
    # lm-eval tasks (select.lm_eval_*) or another strategy than HALO's score no recall on the built-in probes
    even = make_plan(config_for(teacher_dir, tmp_path / "run", "select.recall_context=8192", "select.strategy=even"))
    assert even["beyond_teacher_window"] == []
    # the needle strategy reads the teacher's attention on prompts of select.recall_context tokens
    needle = make_plan(config_for(teacher_dir, tmp_path / "run", "select.recall_context=8192",
                                  "select.strategy=needle"))
    assert needle["beyond_teacher_window"] == [
        "select.recall_context=8192 is longer than the teacher's context window (4096 tokens, its "
        "max_position_embeddings): the needle strategy reads where the teacher's attention goes there, past what the "
        "teacher was trained on. Keep it at most 4096; stage 3 (stage3.seq_len) trains without the teacher and is "
        "the stage to go longer."]


def test_durations_are_written_in_a_readable_unit():
    assert [duration_label(s) for s in (0, 0.2, 0.6, 89, 90, 5399, 5400)] == [
        "0 s", "<1 s", "1 s", "89 s", "2 min", "90 min", "1.5 h"]


def test_flops_are_written_with_a_unit_prefix():
    from hypenet.halo.plan import _flops

    assert [_flops(n) for n in (3.1e20, 1.23e12, 8.05e8, 4.2e4, 999)] == \
        ["310 EFLOP", "1.23 TFLOP", "805 MFLOP", "42 KFLOP", "999 FLOP"]


@pytest.mark.parametrize("stage, left, rate, later, cost, seconds, line", [
    ("stage2", 3_000_000, 1500.0, {"stage3": 6_000_000}, None, 6000.0,
     "conversion: about 1.7 h of training left (estimate: 3,000,000 tokens of stage2 at its measured 1,500 tokens/s, "
     "then 6,000,000 of stage3 at 1,500; the later stages' at this one's, though stages differ in cost per token; "
     "selection and export not counted)"),
    # with each later stage's cost per token relative to this one's: its tokens/s divided by it
    ("stage1", 3_000, 1500.0, {"stage2": 6_000, "stage3": 1_500}, {"stage1": 1.0, "stage2": 2.5, "stage3": 2.0},
     2 + 6_000 / 600 + 1_500 / 750,
     "conversion: about 14 s of training left (estimate: 3,000 tokens of stage1 at its measured 1,500 tokens/s, then "
     "6,000 of stage2 at 600, then 1,500 of stage3 at 750; the later stages' tokens/s inferred from this one's by "
     "their model FLOPs per token (on a GPU also bench-train's MFU); selection and export not counted)"),
    # with the layer selection ahead (stage 1 measured): its teacher tokens at its own inferred tokens/s, in the line
    ("stage1", 3_000, 1500.0, {"select": 30_000, "stage2": 6_000}, {"stage1": 1.0, "select": 0.25, "stage2": 2.5},
     2 + 30_000 / 6_000 + 6_000 / 600,
     "conversion: about 17 s of training and layer selection left (estimate: 3,000 tokens of stage1 at its measured "
     "1,500 tokens/s, then 30,000 of select at 6,000, then 6,000 of stage2 at 600; the later stages' tokens/s "
     "inferred from this one's by their model FLOPs per token (on a GPU also bench-train's MFU; the layer selection, "
     "teacher passes, by its FLOPs alone); export not counted)"),
    # the last training stage: no caveat about the others
    ("stage3", 4096, 512.0, {}, None, 8.0,
     "conversion: about 8 s of training left (estimate: 4,096 tokens of stage3 at its measured 512 tokens/s; "
     "selection and export not counted)"),
])
def test_the_time_left_is_the_tokens_it_names_at_the_throughput_it_names(stage, left, rate, later, cost, seconds,
                                                                        line):
    from hypenet.halo.plan import time_left

    assert time_left(stage, left, rate, later, cost) == (seconds, line)


def test_the_time_left_names_the_export_and_what_it_leaves_out():
    """With the export's search ahead: its tokens at their inferred tokens/s, the line's subject and basis naming it,
    and what the caller says is left out (or nothing)."""
    from hypenet.halo.plan import time_left

    cost = {"stage3": 1.0, "export": 0.25}
    seconds, line = time_left("stage3", 4096, 512.0, {"export": 12_288}, cost, "up to 4 bases past the export's grid")
    assert seconds == 8 + 12_288 / 2048
    assert line == (
        "conversion: about 14 s of training and export left (estimate: 4,096 tokens of stage3 at its measured 512 "
        "tokens/s, then 12,288 of export at 2,048; the later stages' tokens/s inferred from this one's by their model "
        "FLOPs per token (on a GPU also bench-train's MFU; the export, forward passes, by its FLOPs alone); up to 4 "
        "bases past the export's grid not counted)")
    cost = {"stage1": 1.0, "select": 0.5, "stage2": 2.0, "export": 0.25}
    seconds, line = time_left("stage1", 1000, 1000.0, {"select": 1000, "stage2": 500, "export": 4000}, cost, "")
    assert seconds == 1 + 0.5 + 1 + 1
    assert line == (
        "conversion: about 4 s of training, layer selection and export left (estimate: 1,000 tokens of stage1 at its "
        "measured 1,000 tokens/s, then 1,000 of select at 2,000, then 500 of stage2 at 500, then 4,000 of export at "
        "4,000; the later stages' tokens/s inferred from this one's by their model FLOPs per token (on a GPU also "
        "bench-train's MFU; the layer selection, teacher passes and the export, forward passes, by their FLOPs "
        "alone))")


def test_the_stages_relative_cost_is_their_flops_per_token_and_on_a_gpu_the_measured_mfu(teacher_dir, tmp_path):
    """The cost per token that turns one stage's measured tokens/s into the others': the plan's FLOPs per token, and
    on a GPU over bench-train's MFU of each stage (stage 1 runs at a lower MFU there)."""
    from hypenet.halo.plan import (
        attention_layer_count,
        export_flops,
        nearest_mfu,
        relative_costs,
        selection_flops,
        selection_tokens,
    )
    from hypenet.halo.stage1 import LayerAlignment
    from hypenet.teachers import build_hypenet_from_teacher

    config = config_for(teacher_dir, tmp_path / "run")
    plan = make_plan(config)
    per_token = {row["stage"]: row["flops"] / row["tokens"] for row in plan["stages"]}
    teacher_cfg = Qwen3Config.from_pretrained(teacher_dir)
    resolved = resolve(config, plan["teacher"]["parameters"])
    cpu = relative_costs(teacher_cfg, resolved, "stage1", gpu=False)
    # the layer selection's per token of its teacher passes: its FLOPs per token over the stage's, at the stage's MFU
    with torch.device("meta"):
        teacher = Qwen3ForCausalLM(teacher_cfg)
        students = LayerAlignment(teacher).students
    per_token["select"] = selection_flops(teacher, students, resolved) / selection_tokens(resolved, 8)
    assert cpu == pytest.approx({name: per_token[name] / per_token["stage1"] for name in per_token}, rel=1e-12)
    assert cpu["stage1"] == 1 and cpu["stage2"] > 1  # stage 2 trains the whole student beside the teacher
    assert cpu["select"] < 1  # a forward pass, the layers before the swapped one replayed
    # --plan names the same sweep: its teacher passes, tokens and FLOPs
    assert (plan["selection_tokens"], plan["selection_flops"]) == (
        selection_tokens(resolved, 8), selection_flops(teacher, students, resolved))
    assert (f"Layer selection (`halo`; 9 teacher passes over the probes, {_count(plan['selection_tokens'])} tokens in "
            f"all, {_flops(plan['selection_flops'])}): to run.") in markdown(plan)
    even = make_plan(config_for(teacher_dir, tmp_path / "run", "select.strategy=even"))  # no teacher pass
    assert even["selection_tokens"] is None and "Layer selection (`even`): to run." in markdown(even)
    mfu = dict(zip(("stage1", "stage2", "stage3"), nearest_mfu(plan["teacher"]["parameters"], False)[1]))
    mfu["select"] = mfu["stage2"]
    gpu = relative_costs(teacher_cfg, resolved, "stage2", gpu=True)
    assert gpu == pytest.approx({name: (per_token[name] / mfu[name]) / (per_token["stage2"] / mfu["stage2"])
                                 for name in per_token}, rel=1e-12)
    # no sweep with the built-in probes, no cost for it
    even = resolve(config_for(teacher_dir, tmp_path / "run", "select.strategy=even"), plan["teacher"]["parameters"])
    assert "select" not in relative_costs(teacher_cfg, even, "stage1", gpu=False)
    # the export's per token of the sequences its search runs: `export_flops` over them, at the stage's MFU; none
    # without those lengths, or for a student without attention layers (its export searches no base)
    lengths = [4 * resolved.stage3.seq_len, 3 * resolved.stage3.seq_len]
    with_export = relative_costs(teacher_cfg, resolved, "stage2", gpu=True, export_lengths=lengths)
    with torch.device("meta"):
        student = build_hypenet_from_teacher(teacher, ["attention"] * 2 + ["lightning"] * 6)
    assert student.config.mixer_types.count("attention") == attention_layer_count(resolved, 8)
    assert with_export == pytest.approx(
        {**gpu, "export": export_flops(student, lengths) / sum(lengths) / per_token["stage2"]}, rel=1e-12)
    assert "export" not in gpu
    none = resolve(config_for(teacher_dir, tmp_path / "run", "select.strategy=none"), plan["teacher"]["parameters"])
    assert "export" not in relative_costs(teacher_cfg, none, "stage1", gpu=False, export_lengths=lengths)
    # --plan bounds the export's search: its grid's bases over max_docs held-out documents of eval_len tokens
    bases, docs = len(set(resolved.export.logit_scaling_candidates)), resolved.export.max_docs
    length = resolved.export.eval_len or 4 * resolved.stage3.seq_len
    assert plan["export_flops"] == bases * export_flops(student, [length] * docs)
    assert (f"its {bases} bases over at most {docs} held-out documents of {length:,} tokens: at most "
            f"{_flops(plan['export_flops'])}") in markdown(plan)
    no_search = make_plan(config_for(teacher_dir, tmp_path / "run", "select.strategy=none"))
    assert no_search["export_flops"] is None and "held-out documents of" not in markdown(no_search)


def test_a_stage_trains_its_budget_in_whole_steps(teacher_dir, tmp_path):
    from hypenet.halo.plan import trained_tokens

    config = resolve(config_for(teacher_dir, tmp_path / "run", "stage1.tokens=5000", "stage1.seq_len=256",
                                "stage1.batch_size=4"), 10**6)
    assert trained_tokens(config, "stage1") == 4096  # 4 steps of 4 x 256
    assert trained_tokens(config, "stage2") == config.stage2.steps() * config.stage2.batch_size * config.stage2.seq_len
