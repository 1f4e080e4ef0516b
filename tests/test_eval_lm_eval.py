"""lm-evaluation-harness on a tiny random model with a local offline task (skipped without lm-eval installed)."""

from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is optional: pip install 'hypenet[eval]'")

from test_eval_tiny import tiny_llama, tiny_tokenizer  # noqa: E402

from hypenet.eval.lm_eval_adapter import run_lm_eval  # noqa: E402

TASKS = Path(__file__).parent / "data" / "lm_eval_tasks"


def test_local_task_batched_equals_unbatched():
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer)
    single = run_lm_eval(model, tokenizer, ["hypenet_tiny_mc"], include_path=TASKS, batch_size=1)
    batched = run_lm_eval(model, tokenizer, ["hypenet_tiny_mc"], include_path=TASKS, batch_size=4)
    assert set(single) == {"hypenet_tiny_mc"}
    assert set(single["hypenet_tiny_mc"]) == {"acc", "acc_norm"}
    assert 0.0 <= single["hypenet_tiny_mc"]["acc"] <= 1.0
    assert single["hypenet_tiny_mc"]["acc"] * 6 == pytest.approx(round(single["hypenet_tiny_mc"]["acc"] * 6))
    assert batched["hypenet_tiny_mc"] == pytest.approx(single["hypenet_tiny_mc"])


def test_unknown_task_names_the_fix():
    tokenizer = tiny_tokenizer()
    with pytest.raises(ValueError, match="lm-eval-include-path"):
        run_lm_eval(tiny_llama(tokenizer), tokenizer, ["no_such_task_xyz"], include_path=TASKS)
