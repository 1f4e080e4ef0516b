"""What the `hypenet` command (and `python -m hypenet.data`) imports: --help and argument errors answer without
torch, transformers, accelerate or DeepSpeed (importing them took 5 s), and DeepSpeed, which accelerate imports
wherever it is installed, stays quiet about finding no GPU in a run that does not use it."""

import os
import subprocess
import sys
import textwrap

import pytest

FRAMEWORKS = {"torch", "transformers", "accelerate", "deepspeed", "numpy", "matplotlib", "triton"}


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def loaded_frameworks(result: subprocess.CompletedProcess) -> set[str]:
    assert result.returncode == 0, result.stderr[-3000:]
    return set(result.stdout.split()[-1].split(",")) - {""}


def test_help_and_argument_errors_import_no_framework():
    result = run_python("""
        import contextlib, io, sys
        from hypenet.cli import main
        from hypenet.data.__main__ import main as data_main

        cases = [(["--help"], 0), (["--version"], 0), (["convert", "--help"], 0), (["stage2", "--help"], 0),
                 (["eval", "--help"], 0), (["compare", "--help"], 0), (["merge-evals", "--help"], 0),
                 (["generate", "--help"], 0), (["bench", "--help"], 0), (["bench-train", "--help"], 0),
                 (["bench-scaling", "--help"], 0), (["convert", "--no-such-option"], 2), (["eval"], 2),
                 (["no-such-command"], 2), (["convert", "--preset", "no-such-preset"], 2),
                 (["bench", "tiny-hypenet", "--gemv-fusion", "no-such-part"], 2), (["eval", "m", "--dtype", "x"], 2)]
        cases = [(main, argv, code) for argv, code in cases] + [  # and python -m hypenet.data's
            (data_main, argv, code) for argv, code in [(["--help"], 0), ([], 2), (["no-such-command"], 2),
                                                       (["export"], 2), (["status", "--no-such-option"], 2)]]
        for main, argv, code in cases:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                try:
                    main(argv)
                    raise AssertionError(f"{argv} did not exit")
                except SystemExit as exit:
                    assert (exit.code or 0) == code, (argv, exit.code)
        print(",".join(sorted({name.split(".")[0] for name in sys.modules})))
    """)
    assert loaded_frameworks(result) & FRAMEWORKS == set()


def test_the_package_and_its_model_classes_load_on_demand():
    """`import hypenet` is light; asking for a model class loads the model and registers it with the Auto classes,
    as importing hypenet.model does (the export's save_pretrained copies the modeling files by that registration)."""
    result = run_python("""
        import sys
        import hypenet, hypenet.bench, hypenet.fast, hypenet.halo
        assert "torch" not in sys.modules, "import hypenet loaded torch"
        from hypenet import HypeNetConfig, HypeNetForCausalLM
        from hypenet.bench import run
        from hypenet.halo import convert
        from transformers import AutoConfig, AutoModelForCausalLM
        assert AutoConfig.for_model("hypenet").__class__ is HypeNetConfig
        assert HypeNetForCausalLM._auto_class == "AutoModelForCausalLM" and callable(run) and callable(convert)
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.split()[-1] == "ok", result.stderr[-3000:]


def test_each_packages_lazy_names_resolve_and_list_and_no_other_name_does():
    """The packages' lazy names (hypenet._lazy) are their submodules' objects, listed by dir() before they load;
    hypenet.bench's `run` is the function even after the submodule of that name was imported by another of its
    names; an unknown name is an AttributeError that names the package."""
    result = run_python("""
        import importlib, sys
        lazy = [("hypenet", "model", ["HypeNetConfig", "HypeNetForCausalLM", "HypeNetModel"]),
                ("hypenet.bench", "run", ["BenchSettings", "fill_synthetic", "run"]),
                ("hypenet.fast", "attention", ["decode_attention", "decode_attention_reference", "prefill_attention"]),
                ("hypenet.fast", "engine", ["FastHypeNet", "StaticHybridCache", "sample"]),
                ("hypenet.halo", "pipeline", ["STAGES", "convert", "run_stages"])]
        for package, submodule, names in lazy:
            package = importlib.import_module(package)
            assert set(names) <= set(dir(package)), (package.__name__, dir(package))
        assert "torch" not in sys.modules, "dir() loaded torch"
        import hypenet.bench
        assert hypenet.bench.BenchSettings.__module__ == "hypenet.bench.run"
        assert callable(hypenet.bench.run) and hypenet.bench.run is sys.modules["hypenet.bench.run"].run
        for package, submodule, names in lazy:
            package = importlib.import_module(package)
            module = importlib.import_module(f"{package.__name__}.{submodule}")
            for name in names:
                assert getattr(package, name) is getattr(module, name), (package.__name__, name)
            try:
                package.no_such_name
                raise AssertionError(f"{package.__name__}.no_such_name")
            except AttributeError as error:
                assert str(error) == f"module {package.__name__!r} has no attribute 'no_such_name'", error
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.split()[-1] == "ok", result.stderr[-3000:]


def test_the_plan_does_not_import_matplotlib():
    """`hypenet convert --plan` imports the export (its logit-scaling rule) but draws nothing: matplotlib, 0.4 s of
    its 5 s, stays out (the export's length labels come from hypenet.units, not the figures' module)."""
    result = run_python("""
        import sys
        import hypenet.halo.plan
        print(",".join(sorted({name.split(".")[0] for name in sys.modules})))
    """)
    assert "torch" in loaded_frameworks(result) and "matplotlib" not in loaded_frameworks(result)


def test_a_cpu_benchmark_does_not_import_deepspeed(tmp_path):
    result = run_python(f"""
        import sys
        from hypenet.cli import main

        assert main(["bench", "tiny-hypenet", "--device", "cpu", "--contexts", "64", "--decode-tokens", "2",
                     "--warmup-tokens", "1", "--no-compile", "--out", {str(tmp_path)!r}]) == 0
        print(",".join(sorted({{name.split(".")[0] for name in sys.modules}})))
    """)
    assert "torch" in loaded_frameworks(result) and "deepspeed" not in loaded_frameworks(result)


def test_deepspeed_imported_by_accelerate_is_quiet_unless_the_run_uses_it(tmp_path):
    """A conversion imports DeepSpeed through accelerate's extract_model_from_parallel (Accelerator.get_state_dict,
    save_pretrained) wherever it is installed; its import warns on a machine without a GPU. Under the hypenet
    command that warning is dropped, unless accelerate launched the run with DeepSpeed."""
    pytest.importorskip("deepspeed")
    code = """
        import contextlib, io, sys
        import torch
        from accelerate.utils import extract_model_from_parallel
        from hypenet.cli import main

        if sys.argv[1:] == ["cli"]:  # a command that runs (and here ends on a missing model) sets the filter
            with contextlib.redirect_stderr(io.StringIO()):
                assert main(["eval", "no-such-model-folder/"]) == 2
        extract_model_from_parallel(torch.nn.Linear(2, 2))  # what a conversion's gathering and export call
        assert "deepspeed" in sys.modules
    """
    notice = "Setting accelerator to CPU"

    def output(*args, **env) -> str:
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                                timeout=300, env={**os.environ, **env}, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout + result.stderr

    if notice not in output("plain"):
        pytest.skip("DeepSpeed found an accelerator here: it has no notice to drop")
    assert notice not in output("cli")
    assert notice in output("cli", ACCELERATE_USE_DEEPSPEED="true")
