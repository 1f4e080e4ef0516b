"""`hypenet bench-train` under several processes and `hypenet bench-scaling` (issue 7), on the CPU: 2 gloo processes
of data parallelism train on the same global batches as one process, so the losses agree step by step (fp32: up
to summation order); the per-GPU figures divide by the processes; the comparison flags runs that are not alike."""

import json
import os
import subprocess
import sys

import pytest

from hypenet.bench.scaling import markdown, run
from hypenet.cli import main
from hypenet.halo.config import HaloError

STAGE2 = ["--stages", "stage2", "--steps", "4", "--warmup-steps", "1", "--set", "stage2.seq_len=64",
          "--set", "stage2.batch_size=4", "--set", "stage2.warmup_steps=1", "--set", "stage2.lr=3e-3"]


def bench_train(out, *extra, processes: int = 1):
    args = ["tiny-hypenet", "--device", "cpu", *STAGE2, *extra, "--out", str(out)]
    if processes == 1:
        assert main(["bench-train", *args]) == 0
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   "-m", "hypenet.bench.train", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count("# hypenet bench-train") == 1  # only the main process prints the table
    return json.loads((out / "train_speed.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling")
    reports = {
        "one": bench_train(root / "one", "--set", "stage2.micro_batch_size=2"),
        "one-micro1": bench_train(root / "one-micro1", "--set", "stage2.micro_batch_size=1"),
        "ddp": bench_train(root / "ddp", "--set", "stage2.micro_batch_size=2", processes=2),
    }
    return root, reports


def test_two_processes_train_on_the_same_batches(runs):
    _, reports = runs
    one, ddp = reports["one"], reports["ddp"]
    assert (one["processes"], one["distributed"]) == (1, "NO")
    assert (ddp["processes"], ddp["distributed"]) == (2, "MULTI_CPU") and ddp["launch"]["WORLD_SIZE"] == "2"
    row = ddp["stages"][0]
    assert row["batch_size"] == 4 and row["micro_batch_size"] == 2  # global batch; 2 sequences per process
    assert row["tokens_per_s_per_gpu"] == pytest.approx(row["tokens_per_s"] / 2)
    assert row["mfu"] == pytest.approx(row["model_tflops"] / 2 / 989.4)
    single = [r["loss"] for r in one["stages"][0]["engine_log"]]
    double = [r["loss"] for r in row["engine_log"]]
    assert len(double) == len(single) == 4 and single[-1] < single[0]
    assert double == pytest.approx(single, rel=1e-4)


def test_scaling_compares_losses_and_speed_per_gpu(runs, tmp_path):
    root, reports = runs
    out = tmp_path / "compare"
    code = main(["bench-scaling", f"one={root / 'one'}", f"one-micro1={root / 'one-micro1'}", f"ddp={root / 'ddp'}",
                 "--noise", "one-micro1", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "scaling.json").read_text())
    assert result["reference"] == "one" and [r["run"] for r in result["runs"]] == ["one", "one-micro1", "ddp"]
    first, noise, ddp = result["runs"]
    assert first["max_abs_loss_diff"] == 0.0 and first["per_gpu_of_reference"] == 1.0
    single = [r["loss"] for r in reports["one"]["stages"][0]["engine_log"]]
    double = [r["loss"] for r in reports["ddp"]["stages"][0]["engine_log"]]
    assert ddp["max_abs_loss_diff"] == max(abs(a - b) for a, b in zip(double, single))
    assert result["noise_max_abs_loss_diff"] == noise["max_abs_loss_diff"]
    speed = reports["ddp"]["stages"][0]["tokens_per_s"] / 2
    assert ddp["per_gpu_of_reference"] == pytest.approx(speed / reports["one"]["stages"][0]["tokens_per_s"])
    table = (out / "scaling.md").read_text()
    assert "| ddp | 2 | MULTI_CPU | 2 |" in table and "Noise floor: one-micro1" in table
    assert ddp["device"].startswith("cpu") and "peak GiB" not in table and table.count("no peak-memory column") == 1
    assert (out / "scaling.png").stat().st_size > 10_000


def test_scaling_refuses_runs_that_are_not_alike(runs, tmp_path, capsys):
    root, _ = runs
    other = tmp_path / "other"
    bench_train(other, "--set", "stage2.batch_size=2", "--set", "stage2.micro_batch_size=2")
    with pytest.raises(HaloError, match=r"other differs from one in the stage's batch_size: 2 vs 4"):
        run([f"one={root / 'one'}", f"other={other}"], "stage2", tmp_path / "out")
    with pytest.raises(HaloError, match=r"--noise 'one' names none of the runs compared with the reference"):
        run([f"one={root / 'one'}", f"ddp={root / 'ddp'}"], "stage2", tmp_path / "out", noise="one")
    with pytest.raises(HaloError, match=r"has no finished stage3 \(not run\)"):
        run([f"one={root / 'one'}", f"ddp={root / 'ddp'}"], "stage3", tmp_path / "out")
    assert main(["bench-scaling", f"one={root / 'one'}", str(root / "ddp"), "--out", str(tmp_path / "out")]) == 2
    assert "give each run as NAME=FOLDER" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_scaling_shows_peak_memory_only_where_it_was_measured():
    """Peak memory is the CUDA allocator's: CPU runs get no column of empty cells but one line that says why."""
    def run_row(name, device, peak):
        return {"run": name, "processes": 1, "distributed": "NO", "compile": False, "micro_batch_size": 2,
                "seconds_per_step": 1.0, "tokens_per_s": 256.0, "tokens_per_s_per_gpu": 256.0,
                "per_gpu_of_reference": 1.0, "mfu": 0.1, "device": device, "peak_mem_gib": peak,
                "max_abs_loss_diff": 0.0, "mean_abs_loss_diff": 0.0, "max_rel_loss_diff": 0.0, "command": "c"}

    result = {"stage": "stage2", "shape": "tiny-hypenet", "steps": 4, "batch_size": 4, "seq_len": 64,
              "reference": "one", "noise": None, "noise_max_abs_loss_diff": None}

    def table(runs):
        text = markdown({**result, "runs": runs}, "c")
        header, _, *rows = (line for line in text.splitlines() if line.startswith("|"))
        return text, [c.strip() for c in header.strip("|").split("|")], [
            [c.strip() for c in row.strip("|").split("|")] for row in rows]

    text, header, rows = table([run_row("one", "cpu", None), run_row("two", "cpu", None)])
    assert not [c for c in header if "peak" in c] and text.count("no peak-memory column") == 1
    assert all(len(row) == len(header) and all(row) for row in rows)
    text, header, rows = table([run_row("one", "cuda:0", 12.25), run_row("two", "cuda:0", 6.5)])
    column = header.index("peak GiB per GPU")
    assert [row[column] for row in rows] == ["12.2", "6.5"] and "no peak-memory column" not in text
