"""What the `hypenet` command imports: --help and argument errors answer without torch, transformers, accelerate or
DeepSpeed (importing them took 5 s)."""

import os
import subprocess
import sys
import textwrap

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

        cases = [(["--help"], 0), (["--version"], 0), (["convert", "--help"], 0), (["stage2", "--help"], 0),
                 (["eval", "--help"], 0), (["compare", "--help"], 0), (["merge-evals", "--help"], 0),
                 (["generate", "--help"], 0), (["bench", "--help"], 0), (["bench-train", "--help"], 0),
                 (["bench-scaling", "--help"], 0), (["convert", "--no-such-option"], 2), (["eval"], 2),
                 (["no-such-command"], 2), (["convert", "--preset", "no-such-preset"], 2),
                 (["bench", "tiny-hypenet", "--gemv-fusion", "no-such-part"], 2), (["eval", "m", "--dtype", "x"], 2)]
        for argv, code in cases:
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
