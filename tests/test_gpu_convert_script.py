"""scripts/gpu_convert.sh on a CPU with a tiny teacher: every step runs once, the results are packed, a rerun skips
what is done, and a deadline stops the script cleanly before a step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml
from test_halo_pipeline import make_documents, make_teacher, make_tokenizer, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_convert.sh"

# The GPU config's shape of run, at the size of tests/test_halo_pipeline.py's tiny conversions.
TINY_CONFIG = {
    "device": "cpu", "checkpoint_every": 5,
    "stage1": {"tokens": 2048, "seq_len": 64, "batch_size": 4},
    "select": {"recall_samples": 2, "recall_context": 256, "commonsense_tokens": 256, "batch_size": 4},
    "stage2": {"tokens": 2048, "seq_len": 64, "batch_size": 4, "lr": 1e-3},
    "stage3": {"tokens": 1024, "seq_len": 256, "batch_size": 2, "lr": 1e-3},
    "export": {"logit_scaling_candidates": [100.0, 500.0], "max_docs": 1, "eval_len": 512},
}
EVAL_OPTIONS = ("--niah-lengths 400,600 --niah-depths 0.5 --niah-samples 1 --tasks single_1,single_2 "
                "--batch-size 2 --ppl-docs 2 --ppl-max-len 600 --device cpu")
SPEED_OPTIONS = "tiny-hypenet --device cpu --steps 2 --warmup-steps 1 --stages stage2"
NEEDLE_OPTIONS = "--tasks single_1 --niah-lengths 400 --niah-depths 0.5 --needle-attention-samples 1 --device cpu"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_convert")
    documents = make_documents(300)
    data = write_jsonl(root / "data.jsonl", documents)
    corpus = root / "corpus.jsonl.xz"
    subprocess.run([sys.executable, "-m", "hypenet.data", "export", str(corpus), "--source", str(data)], check=True,
                   capture_output=True)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG))
    env = {
        **os.environ, "TEACHER": str(make_teacher(root / "teacher", "qwen3", make_tokenizer(documents))),
        "CORPUS": str(corpus), "CONFIG": str(config), "RUNS": str(root / "runs"), "OUT": str(root / "out"),
        "WHEELS": str(root / "no-wheels"), "EVAL_OPTIONS": EVAL_OPTIONS, "SPEED_OPTIONS": SPEED_OPTIONS,
        "NEEDLE_OPTIONS": NEEDLE_OPTIONS,
        "HOME": str(root),  # tokenised corpora are cached under ~/.cache
        # not the checkout's .carry/triton_cache.txz of a real lease: ~90 MB to unpack and pack again
        "TRITON_CACHE": str(root / "no-triton-cache.txz"),
    }
    return root, env


def run_script(env: dict, deadline: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(deadline)], env=env, capture_output=True, text=True, timeout=1200)


def test_deadline_stops_before_a_step_and_keeps_nothing_half_done(setup):
    root, env = setup
    cache = root / ".triton" / "cache"  # HOME is root: a kernel compiled by an earlier step
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "kernel.cubin").write_bytes(b"\x7fELF")
    run = run_script({**env, "RUNS": str(root / "early"), "OUT": str(root / "early_out")}, deadline=10)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "deadline: stopping before setup; run the same command again to continue" in run.stdout
    assert not list((root / "early" / "done").iterdir())
    # what stops the script packs the kernel cache for the next lease
    with tarfile.open(root / "early_out" / "triton_cache.txz") as archive:
        assert archive.extractfile("./kernel.cubin").read() == b"\x7fELF"


def test_a_step_that_ignores_the_interrupt_is_killed_and_the_script_ends_by_its_deadline(setup, tmp_path):
    """The twenty-third lease: a step started with 95 s left, interrupted at the deadline, was still running when the
    device call's limit (15 s past the deadline) killed the whole call. Now the step is interrupted STOP_GRACE s
    before the deadline and killed 20 s before it, and the script has packed and exited by the deadline."""
    root, env = setup
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # setup's last command is python3: here one that ignores SIGINT, as a step stuck in I/O or in a C call would
    fake = bin_dir / "python3"
    fake.write_text("#!/usr/bin/env bash\ntrap '' INT\nsleep 120\n")
    fake.chmod(0o755)
    runs = tmp_path / "runs"
    deadline, grace = 55, 23
    began = time.monotonic()
    run = run_script({**env, "PATH": f"{bin_dir}:{env['PATH']}", "RUNS": str(runs), "OUT": str(tmp_path / "out"),
                      "STOP_GRACE": str(grace)}, deadline=deadline)
    took = time.monotonic() - began
    assert run.returncode == 0, run.stdout + run.stderr
    assert "deadline: setup interrupted after" in run.stdout
    assert f"exit 137 (killed: still running {grace - 20} s after the deadline's SIGINT)" in run.stdout
    assert not (runs / "done" / "setup").exists()
    assert (tmp_path / "out" / "gpu_convert.tgz").exists()
    # interrupted at deadline - grace (32 s), killed 3 s later, packed: exited by the deadline (the old script sent
    # SIGINT at the deadline and SIGKILL 30 s after it)
    assert deadline - grace - 3 < took < deadline, (took, run.stdout)


def test_stop_grace_must_leave_time_to_stop_a_step(setup, tmp_path):
    root, env = setup
    run = run_script({**env, "RUNS": str(tmp_path / "runs"), "STOP_GRACE": "10"}, deadline=300)
    assert run.returncode == 2
    assert "STOP_GRACE=10: seconds, more than the 20 kept for packing" in run.stderr


def test_whole_run_packs_every_result_and_a_rerun_skips_it(setup):
    """Every step with one ablation (the all-RNN one runs alone in test_ablations_can_be_run_one_at_a_time, the
    training speed in test_without_ablations_the_run_ends_after_the_comparison)."""
    root, env = setup
    env = {**env, "ABLATIONS": "even", "TRAIN_SPEED": "0"}
    run = run_script(env, deadline=1500)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "all done" in run.stdout
    steps = ["setup", "convert_halo", "eval_teacher", "eval_halo", "needles_halo", "compare", "share_stage1_even",
             "convert_even", "eval_even", "needles_even", "ablation"]
    assert sorted(p.name for p in (root / "runs" / "done").iterdir()) == sorted(steps)

    with tarfile.open(root / "out" / "gpu_convert.tgz") as archive:
        names = set(archive.getnames())
        report = lambda run: json.load(archive.extractfile(f"results/convert_{run}/report.json"))  # noqa: E731
        halo, even = report("halo"), report("even")
        ablation = archive.extractfile("results/ablation/report.md").read().decode()
        starts = archive.extractfile("results/ablation/answer_starts.md").read().decode()
        needles = json.load(archive.extractfile("results/needle_attention/hypenet-halo/results.json"))
    for name in ("results/eval/teacher/results.json", "results/eval/hypenet-halo/results.json",
                 "results/compare/report.md", "results/compare/answer_starts.md",
                 "logs/summary.log"):
        assert name in names, name
    assert not [n for n in names if n.endswith(".safetensors")]  # no weights come back
    assert halo["selection"]["strategy"] == "halo" and len(halo["selection"]["attention_layers"]) == 1
    assert even["selection"]["strategy"] == "even"
    # The ablations reuse the HALO run's stage 1 and train stages 2 and 3 with the same budget.
    assert even["stages"]["stage1"] == halo["stages"]["stage1"]
    assert even["stages"]["stage2"]["tokens"] == halo["stages"]["stage2"]["tokens"]
    assert ablation.startswith("# teacher vs halo vs even")
    # how each model's NIAH answers begin: one row per model and task
    assert [line.split(" | ")[0:2] for line in starts.splitlines()[2:]] == [
        [f"| runs/{label}", task] for label in ("teacher", "hypenet-halo", "hypenet-even")
        for task in ("single_1", "single_2")]
    # where each student with attention layers looks (the all-RNN one has none)
    assert needles["needle_attention"]["layers"] == [f"layer {i}" for i in halo["selection"]["attention_layers"]]
    assert "results/needle_attention/hypenet-even/results.json" in names

    again = run_script(env, deadline=1500)
    assert again.returncode == 0 and "all done" in again.stdout
    assert "start" not in again.stdout  # every step was skipped


STEPS_LATER = ["compare", "convert_even", "eval_even", "needles_even", "share_stage1_none", "convert_none", "eval_none",
               "ablation", "train_speed"]


def mark_done(runs: Path, steps) -> None:
    """Record steps as finished in a runs folder, as the script does, so that a run starts after them."""
    (runs / "done").mkdir(parents=True)
    for step in steps:
        (runs / "done" / step).write_text("0")


def test_earlier_evaluations_are_reused_only_with_the_same_settings(setup):
    """TEACHER_EVAL and HALO_EVAL: the teacher's and the HALO student's evaluations are copied instead of run again,
    and HALO itself only runs stage 1 (what the ablations share); other evaluation settings are refused.
    CONVERT_OPTIONS are passed to the conversions."""
    root, env = setup
    earlier = root / "runs" / "eval"
    if not (earlier / "hypenet-halo" / "results.json").is_file():
        pytest.skip("needs the whole run of the test above")
    other_options = EVAL_OPTIONS.replace("--niah-samples 1", "--niah-samples 2")
    for name, options in (("same", EVAL_OPTIONS), ("other", other_options)):
        runs = root / f"reuse_{name}"
        # left to run: setup, HALO's stage 1, the two reused evaluations, sharing stage 1; then the evaluations alone
        mark_done(runs, STEPS_LATER if name == "same" else ["setup", "stage1_halo", "share_stage1_even", *STEPS_LATER])
        run = run_script({**env, "RUNS": str(runs), "OUT": str(root / f"out_{name}"),
                          "TEACHER_EVAL": str(earlier / "teacher"), "HALO_EVAL": str(earlier / "hypenet-halo"),
                          "EVAL_OPTIONS": options, "CONVERT_OPTIONS": "--set stage1.align_attention=true",
                          "HALO_MORE_EVAL": "--evals niah", "STAGE_EVAL": "--evals niah"},
                         deadline=600)
        log = (runs / "logs" / "eval_teacher.log").read_text()
        if name == "same":
            assert run.returncode == 0 and "all done" in run.stdout, run.stdout + log
            assert "start stage1_halo" in run.stdout and "convert_halo" not in run.stdout
            # no HALO model is made here, so none of its extra evaluations runs
            assert "eval_more_halo" not in run.stdout and "eval_stage" not in run.stdout
            assert [p.name for p in (runs / "halo" / "stages").iterdir()] == ["stage1"]
            # CONVERT_OPTIONS reach the conversion: its stage 1 also aligned the attention students
            assert yaml.safe_load((runs / "halo" / "config.yaml").read_text())["stage1"]["align_attention"] is True
            assert (runs / "even" / "stages" / "stage1" / "attention_layers.safetensors").is_file()
            assert (runs / "even" / "stages" / "stage1" / "done.json").is_file()
            for label in ("teacher", "hypenet-halo"):
                assert "same settings" in (runs / "logs" / f"eval_{label.split('-')[-1]}.log").read_text()
                copied = (runs / "eval" / label / "results.json").read_text()
                assert copied == (earlier / label / "results.json").read_text()
        else:
            assert run.returncode == 1 and "FAILED eval_teacher" in run.stdout
            assert "was run with other settings (['niah_samples'])" in log
    # fewer NIAH lengths than the earlier evaluations: reused, with all their lengths
    runs = root / "reuse_fewer"
    mark_done(runs, ["setup", "stage1_halo", "share_stage1_even", *STEPS_LATER])
    run = run_script({**env, "RUNS": str(runs), "OUT": str(root / "out_fewer"),
                      "TEACHER_EVAL": str(earlier / "teacher"), "HALO_EVAL": str(earlier / "hypenet-halo"),
                      "EVAL_OPTIONS": EVAL_OPTIONS.replace("400,600", "600")}, deadline=600)
    assert run.returncode == 0 and "all done" in run.stdout, run.stdout
    assert "NIAH at [400, 600] (these runs ask for [600])" in (runs / "logs" / "eval_teacher.log").read_text()
    copied = (runs / "eval" / "teacher" / "results.json").read_text()
    assert copied == (earlier / "teacher" / "results.json").read_text()
    # an evaluation from before --haystack-heldout existed (no such setting): it took the haystack from the first
    # documents, so it is reused as that, and refused for held-out haystacks
    older = root / "older_eval"
    shutil.copytree(earlier, older)
    for label in ("teacher", "hypenet-halo"):
        results = json.loads((older / label / "results.json").read_text())
        del results["settings"]["haystack_heldout"]
        (older / label / "results.json").write_text(json.dumps(results))
    for name, options in (("older_same", EVAL_OPTIONS), ("older_heldout", EVAL_OPTIONS + " --haystack-heldout")):
        runs = root / name
        mark_done(runs, ["setup", "stage1_halo", "share_stage1_even", *STEPS_LATER])
        run = run_script({**env, "RUNS": str(runs), "OUT": str(root / f"out_{name}"), "EVAL_OPTIONS": options,
                          "TEACHER_EVAL": str(older / "teacher"), "HALO_EVAL": str(older / "hypenet-halo")},
                         deadline=600)
        log = (runs / "logs" / "eval_teacher.log").read_text()
        if name == "older_same":
            assert run.returncode == 0 and "all done" in run.stdout and "same settings" in log, run.stdout + log
        else:
            assert run.returncode == 1 and "was run with other settings (['haystack_heldout'])" in log, log


def test_without_ablations_the_run_ends_after_the_comparison(setup):
    root, env = setup
    runs = root / "no_ablations"
    mark_done(runs, ("setup", "convert_halo", "eval_teacher", "eval_halo", "needles_halo", "compare"))
    run = run_script({**env, "RUNS": str(runs), "OUT": str(root / "out_no_ablations"), "ABLATIONS": "0"}, deadline=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all done (ABLATIONS=0: HALO, its evaluation and the training speed)" in run.stdout
    started = [line.split("] start ")[1].split()[0] for line in run.stdout.splitlines() if "] start " in line]
    assert started == ["train_speed"]
    with tarfile.open(root / "out_no_ablations" / "gpu_convert.tgz") as archive:
        speed = json.load(archive.extractfile("results/train_speed/train_speed.json"))
    assert [(stage["stage"], stage["status"]) for stage in speed["stages"]] == [("stage2", "ok")]
    # TRAIN_SPEED=0 leaves the training-speed benchmark out as well
    runs = root / "no_ablations_no_speed"
    mark_done(runs, ("setup", "convert_halo", "eval_teacher", "eval_halo", "compare"))
    run = run_script({**env, "RUNS": str(runs), "OUT": str(root / "out_no_speed"), "ABLATIONS": "0",
                      "NEEDLE_ATTENTION": "0",
                      "TRAIN_SPEED": "0"}, deadline=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all done (ABLATIONS=0: HALO, its evaluation):" in run.stdout
    assert "] start " not in run.stdout and not (runs / "train_speed").exists()


MORE_EVAL = "--tasks single_1 --niah-lengths 400 --niah-depths 0.5 --niah-samples 1 --device cpu"


def test_more_evaluations_of_the_halo_student_and_its_stage_models(setup):
    """HALO_MORE_EVAL: one more evaluation of the HALO student; STAGE_EVAL: its stage-2 and stage-3 models evaluated
    as they are (their folders hold the tokenizer); both packed with the results."""
    root, env = setup
    earlier = root / "runs"
    if not (earlier / "halo" / "model").is_dir():
        pytest.skip("needs the whole run of the test above")
    runs = root / "more_evals"
    shutil.copytree(earlier / "halo", runs / "halo")
    mark_done(runs, ("setup", "convert_halo", "eval_teacher", "eval_halo", "needles_halo", "compare"))
    run = run_script({**env, "RUNS": str(runs), "OUT": str(root / "out_more_evals"), "ABLATIONS": "0",
                      "TRAIN_SPEED": "0", "HALO_MORE_EVAL": "--evals niah_forced " + MORE_EVAL,
                      "STAGE_EVAL": "--evals niah " + MORE_EVAL}, deadline=300)
    assert run.returncode == 0 and "all done" in run.stdout, run.stdout + run.stderr
    started = [line.split("] start ")[1].split()[0] for line in run.stdout.splitlines() if "] start " in line]
    assert started == ["eval_more_halo", "eval_stage2", "eval_stage3"]
    with tarfile.open(root / "out_more_evals" / "gpu_convert.tgz") as archive:
        more = json.load(archive.extractfile("results/eval_more/hypenet-halo/results.json"))
        stages = [json.load(archive.extractfile(f"results/eval_stages/{stage}/results.json"))
                  for stage in ("stage2", "stage3")]
    assert more["label"] == "hypenet-halo" and more["evals"] == ["niah_forced"]
    assert list(more["niah_forced"]["tasks"]) == ["single_1"]
    for stage, results in zip(("stage2", "stage3"), stages):
        assert results["label"] == stage and results["model"].endswith(f"halo/stages/{stage}/model")
        assert results["evals"] == ["niah"] and list(results["niah"]["tasks"]["single_1"]["by_length"]) == ["400"]


def branch_env(setup, name: str, **more) -> tuple[Path, Path, dict]:
    """A run folder with the whole run's HALO conversion and evaluation done, and the environment of a stage-3 branch
    (lr 2e-3) with the HALO student's grid in two parts, one NIAH length each: (root, runs, env)."""
    root, env = setup
    earlier = root / "runs"
    if not (earlier / "eval" / "hypenet-halo" / "results.json").is_file():
        pytest.skip("needs the whole run of the test above")
    runs = root / name
    shutil.copytree(earlier / "halo", runs / "halo")
    shutil.copytree(earlier / "eval" / "hypenet-halo", runs / "eval" / "hypenet-halo")  # its NIAH: not merged
    mark_done(runs, ("setup", "convert_halo", "eval_teacher", "eval_halo", "needles_halo", "compare"))
    env = {**env, "RUNS": str(runs), "OUT": str(root / f"out_{name}"), "ABLATIONS": "0", "TRAIN_SPEED": "0",
           "NEEDLE_ATTENTION": "0", "EVAL_OPTIONS": "--evals ppl --ppl-docs 2 --ppl-max-len 600 --device cpu",
           "HALO_MORE_EVAL": "--evals niah " + MORE_EVAL, "MORE_EVAL_LENGTHS": "400 600",
           "BRANCH": "--set stage3.lr=0.002", "BRANCH_LABEL": "lr-2e-3", **more}
    return root, runs, env


def test_a_stage3_branch_and_more_evaluations_in_parts(setup):
    """BRANCH: a second stage 3 from the HALO run's stage 2, exported, evaluated like the HALO student and compared
    with it; MORE_EVAL_LENGTHS: HALO_MORE_EVAL in one step per part of its NIAH lengths, merged with the student's
    evaluation when that ran no NIAH."""
    root, runs, env = branch_env(setup, "branch")
    run = run_script(env, deadline=900)
    assert run.returncode == 0 and "all done" in run.stdout, run.stdout[-4000:] + run.stderr[-4000:]
    started = [line.split("] start ")[1].split()[0] for line in run.stdout.splitlines() if "] start " in line]
    assert started == ["eval_more_halo_1", "eval_more_halo_2", "merge_more_halo", "stage3_branch", "export_branch",
                       "eval_branch", "eval_more_branch_1", "eval_more_branch_2", "merge_more_branch", "compare_branch"]
    with tarfile.open(root / "out_branch" / "gpu_convert.tgz") as archive:
        results = lambda path: json.load(archive.extractfile(f"results/{path}"))  # noqa: E731
        halo, branch = results("eval_more/hypenet-halo/results.json"), results("eval_more/lr-2e-3/results.json")
        report = results("convert_branch/report.json")
        settings = yaml.safe_load(archive.extractfile("results/convert_branch/config.yaml"))
        compared = archive.extractfile("results/compare_branch/report.md").read().decode()
        parts = [results(f"eval_parts/lr-2e-3-{i}/results.json") for i in (1, 2)]
    # each part evaluated one length; the merged folder holds both, and the branch's perplexity beside them
    assert [list(part["niah"]["tasks"]["single_1"]["by_length"]) for part in parts] == [["400"], ["600"]]
    for merged in (halo, branch):
        assert list(merged["niah"]["tasks"]["single_1"]["by_length"]) == ["400", "600"]
    assert "perplexity" in branch and branch["label"] == "lr-2e-3" and branch["model"].endswith("branch/model")
    assert "perplexity" not in halo  # its evaluation ran NIAH of its own, at 2 samples: not merged with these
    # the branch is the HALO run's settings with stage 3's learning rate changed, from its stage 2
    before = yaml.safe_load((runs / "halo" / "config.yaml").read_text())
    assert settings["stage3"]["lr"] == 0.002 and before["stage3"]["lr"] != 0.002
    same = lambda config: {k: v for k, v in config.items() if k not in ("stage3", "out")}  # noqa: E731
    assert same(settings) == same(before) and settings["out"].endswith("branch/branch")
    assert report["stages"]["stage2"] == json.loads((runs / "halo" / "report.json").read_text())["stages"]["stage2"]
    assert compared.startswith("# hypenet-halo vs lr-2e-3")
    again = run_script(env, deadline=300)
    assert again.returncode == 0 and "all done" in again.stdout and "] start " not in again.stdout


def test_a_paired_branch_runs_each_part_of_the_grid_for_both_students_in_turn(setup):
    """BRANCH_PAIRED=1: the branch is made before the grid, then each part of MORE_EVAL_LENGTHS runs for the HALO
    student and the branch before the next part, so a lease that ends part-way has both measured at the same lengths;
    the branch's own evaluation and the merges come after the grid."""
    root, runs, env = branch_env(setup, "paired", MORE_EVAL_LENGTHS="600 400", BRANCH_PAIRED="1")
    run = run_script(env, deadline=900)
    assert run.returncode == 0 and "all done" in run.stdout, run.stdout[-4000:] + run.stderr[-4000:]
    started = [line.split("] start ")[1].split()[0] for line in run.stdout.splitlines() if "] start " in line]
    assert started == ["stage3_branch", "export_branch", "eval_more_halo_1", "eval_more_branch_1", "eval_more_halo_2",
                       "eval_more_branch_2", "eval_branch", "merge_more_halo", "merge_more_branch", "compare_branch"]
    with tarfile.open(root / "out_paired" / "gpu_convert.tgz") as archive:
        results = lambda path: json.load(archive.extractfile(f"results/{path}"))  # noqa: E731
        merged = [results(f"eval_more/{label}/results.json") for label in ("hypenet-halo", "lr-2e-3")]
        parts = {label: [results(f"eval_parts/{label}-{i}/results.json") for i in (1, 2)]
                 for label in ("hypenet-halo", "lr-2e-3")}
    for label, (first, second) in parts.items():  # the parts in MORE_EVAL_LENGTHS' order, each its own length
        assert first["label"] == second["label"] == label
        assert [list(part["niah"]["tasks"]["single_1"]["by_length"]) for part in (first, second)] == [["600"], ["400"]]
    for evaluation in merged:
        assert sorted(evaluation["niah"]["tasks"]["single_1"]["by_length"], key=int) == ["400", "600"]
    assert "perplexity" in merged[1] and "perplexity" not in merged[0]


def test_ablations_can_be_run_one_at_a_time(setup):
    """ABLATIONS=none runs only the all-RNN student (e.g. the one a lease had no time for) and compares it with the
    teacher and HALO; a strategy that is not an ablation is refused before anything runs."""
    root, env = setup
    bad = run_script({**env, "RUNS": str(root / "bad_ablations"), "ABLATIONS": "even,manual"}, deadline=60)
    assert bad.returncode == 2 and "ABLATIONS=even,manual: each ablation is even or none" in bad.stderr
    assert not (root / "bad_ablations").exists()
    earlier = root / "runs"
    if not (earlier / "eval" / "hypenet-halo" / "results.json").is_file():
        pytest.skip("needs the whole run of the test above")
    runs = root / "only_none"
    shutil.copytree(earlier / "halo" / "stages" / "stage1", runs / "halo" / "stages" / "stage1")
    shutil.copy(earlier / "halo" / "config.yaml", runs / "halo" / "config.yaml")
    for label in ("teacher", "hypenet-halo"):
        shutil.copytree(earlier / "eval" / label, runs / "eval" / label)
    mark_done(runs, ("setup", "convert_halo", "eval_teacher", "eval_halo", "needles_halo", "compare"))
    run = run_script({**env, "RUNS": str(runs), "OUT": str(root / "out_only_none"), "ABLATIONS": "none",
                      "TRAIN_SPEED": "0"}, deadline=600)
    assert run.returncode == 0 and "all done" in run.stdout, run.stdout + run.stderr
    # the all-RNN student has no attention layer whose look at the needle could be measured
    started = [line.split("] start ")[1].split()[0] for line in run.stdout.splitlines() if "] start " in line]
    assert started == ["share_stage1_none", "convert_none", "eval_none", "ablation"]
    assert (runs / "ablation" / "report.md").read_text().startswith("# teacher vs halo vs none")
    # it starts from HALO's stage 1 and trains stages 2 and 3 with the same budget
    halo, none = (json.loads((folder / "report.json").read_text()) for folder in (earlier / "halo", runs / "none"))
    assert none["selection"]["attention_layers"] == [] and none["stages"]["stage1"] == halo["stages"]["stage1"]
    assert none["stages"]["stage2"]["tokens"] == halo["stages"]["stage2"]["tokens"]


def test_teacher_is_reassembled_from_carried_parts(tmp_path):
    """Without a teacher file, setup joins .carry/p1/gguf.part1, .carry/p2/gguf.part2, ... in order and checks them
    against the carried gguf.sha256; a wrong or missing part is an error that says so."""
    import hashlib
    (tmp_path / "scripts").mkdir()
    for script in (SCRIPT, SCRIPT.parent / "gpu_setup.sh"):  # the script runs from its repository's root
        shutil.copy(script, tmp_path / "scripts" / script.name)
    pieces = [b"GGUF-", b"teacher-", b"bytes"]
    for n, piece in enumerate(pieces, start=1):
        (tmp_path / ".carry" / f"p{n}").mkdir(parents=True)
        (tmp_path / ".carry" / f"p{n}" / f"gguf.part{n}").write_bytes(piece)
    (tmp_path / ".carry" / "p3" / "gguf.sha256").write_text(hashlib.sha256(b"".join(pieces)).hexdigest() + "\n")
    env = {**os.environ, "RUNS": str(tmp_path / "runs"), "WHEELS": str(tmp_path / "no-wheels"),
           "CORPUS": str(tmp_path / "no-corpus.jsonl.xz"), "OUT": str(tmp_path / "out")}

    def setup_step() -> tuple[subprocess.CompletedProcess, str]:
        run = subprocess.run(["bash", str(tmp_path / "scripts" / SCRIPT.name), "120"], env=env, capture_output=True,
                             text=True, timeout=120)
        return run, (tmp_path / "runs" / "logs" / "setup.log").read_text()

    run, log = setup_step()  # the teacher is there; setup then stops at the missing corpus
    teacher = tmp_path / "runs" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert teacher.read_bytes() == b"".join(pieces)
    assert run.returncode == 1 and "no corpus at" in log
    teacher.unlink()
    (tmp_path / ".carry" / "p2" / "gguf.part2").write_bytes(b"other-")
    run, log = setup_step()
    assert run.returncode == 1 and not teacher.exists()
    assert ("the teacher reassembled from .carry/p1/gguf.part1 .carry/p2/gguf.part2 .carry/p3/gguf.part3 does not "
            "match .carry/p3/gguf.sha256") in log
