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
    assert set(single["hypenet_tiny_mc"]) == {"acc", "acc_norm", "samples"}
    assert single["hypenet_tiny_mc"]["samples"] == 6  # the task's 6 documents
    limited = run_lm_eval(model, tokenizer, ["hypenet_tiny_mc"], include_path=TASKS, batch_size=4, limit=4)
    assert limited["hypenet_tiny_mc"]["samples"] == 4
    assert 0.0 <= single["hypenet_tiny_mc"]["acc"] <= 1.0
    assert single["hypenet_tiny_mc"]["acc"] * 6 == pytest.approx(round(single["hypenet_tiny_mc"]["acc"] * 6))
    assert batched["hypenet_tiny_mc"] == pytest.approx(single["hypenet_tiny_mc"])


def test_unknown_task_names_the_fix():
    tokenizer = tiny_tokenizer()
    with pytest.raises(ValueError, match="lm-eval-include-path"):
        run_lm_eval(tiny_llama(tokenizer), tokenizer, ["no_such_task_xyz"], include_path=TASKS)


def test_a_task_whose_dataset_cannot_be_fetched_is_one_line(tmp_path, monkeypatch, capsys):
    import lm_eval
    from huggingface_hub.errors import OfflineModeIsEnabled

    from hypenet.cli import main as hypenet

    def offline(**kwargs):  # as datasets fails for a hub task's data that is not cached, with HF_HUB_OFFLINE=1
        raise OfflineModeIsEnabled("Couldn't reach 'allenai/ai2_arc' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(lm_eval, "simple_evaluate", offline)
    tokenizer = tiny_tokenizer()
    tiny_llama(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    assert hypenet(["eval", str(tmp_path / "model"), "--lm-eval", "hypenet_tiny_mc", "--lm-eval-include-path",
                    str(TASKS), "--device", "cpu", "--out", str(tmp_path / "eval"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (  # after the loading messages, no traceback
        "error: lm-eval could not fetch the dataset of hypenet_tiny_mc (Couldn't reach 'allenai/ai2_arc' on the Hub "
        "(OfflineModeIsEnabled)). Run once where the hub can be reached (the datasets cache keeps it; then "
        "HF_HUB_OFFLINE=1 works), or use tasks whose data is local (--lm-eval-include-path, docs/EVAL.md)")


@pytest.mark.parametrize("option, value, said", [
    ("--limit", "0", "argument --limit: a whole number of documents per task (at least 1) or a fraction of them "
                     "(0 to 1); got '0'"),
    ("--limit", "2.5", "argument --limit: a whole number of documents per task (at least 1) or a fraction of them "
                       "(0 to 1); got '2.5'"),
    ("--lm-eval-include-path", "no-such-folder", "error: --lm-eval-include-path no-such-folder is not a folder: pass "
                                                 "the folder that holds the tasks' YAML files"),
])
def test_a_bad_limit_or_include_path_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys, option, value,
                                                                          said):
    import hypenet.eval.models as eval_models
    from hypenet.cli import main as hypenet

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(eval_models, "load_model_for_eval", loaded)
    monkeypatch.chdir(tmp_path)
    command = ["eval", "embedded", "--lm-eval", "hypenet_tiny_mc", "--lm-eval-include-path", str(TASKS), option, value,
               "--out", str(tmp_path / "eval")]
    try:
        code = hypenet(command)
    except SystemExit as stop:  # argparse's usage error
        code = stop.code
    assert code == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
