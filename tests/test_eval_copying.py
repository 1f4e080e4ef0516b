"""hypenet.eval.copying: how exactly a model continues a span of held-out text it read earlier."""

import json

import numpy as np
import pytest
import torch
from test_eval_cli import model_dir, write_source  # noqa: F401  (the module-scoped fixture)
from test_eval_tiny import tiny_hypenet, tiny_llama, tiny_tokenizer

from hypenet.errors import InvalidInputError
from hypenet.eval.__main__ import main
from hypenet.eval.copying import control_sample, copy_sample, evaluate_copy, greedy_predictions
from hypenet.eval.report import copy_tokens_right

DOCS = [list(range(1000 * d, 1000 * d + 600)) for d in range(4)]  # distinct tokens: a copy's original is unique


def test_a_sample_ends_with_a_span_of_its_first_quarter_again():
    ids, source = copy_sample(DOCS[0], 512, 32, np.random.default_rng(0))
    assert len(ids) == 512 and ids[:480] == DOCS[0][:480]
    assert 0 <= source and source + 32 <= 480 // 4 and ids[480:] == DOCS[0][source:source + 32]
    with pytest.raises(ValueError, match="length >= 8 x span"):
        copy_sample(DOCS[0], 200, 32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="fewer than the 480 that a sample of 512 needs"):
        copy_sample(DOCS[0][:100], 512, 32, np.random.default_rng(0))


def oracle(stop_short: bool = False):
    """Predicts the token after the latest earlier occurrence of the current one: a perfect copier of distinct
    tokens; with stop_short, it gives the copy's last token wrong, as a student that stops a copy early."""
    def predict(ids, first):
        ids = ids.tolist()
        out = [ids[ids.index(ids[t]) + 1] if ids.index(ids[t]) < t else -1 for t in range(first, len(ids) - 1)]
        if stop_short:
            out[-1] = -1
        return torch.tensor(out)
    return predict


def test_scores_a_perfect_copier_a_copier_that_stops_short_and_skips_short_documents():
    perfect = evaluate_copy(None, DOCS, [256, 512], span=16, samples=4, predict=oracle(), progress=False)
    # without its original, the copier has nothing to copy: the control is 0
    assert perfect == {"span": 16, "by_length": {
        length: {"samples": 4, "token_accuracy": 1.0, "second_half": 1.0, "last_token": 1.0, "exact": 1.0,
                 "by_position": [1.0] * 15, "control_samples": 4, "control_accuracy": 0.0}
        for length in ("256", "512")}}
    short = evaluate_copy(None, DOCS[:3] + [DOCS[3][:300]], [256, 512], span=16, samples=4,
                          predict=oracle(stop_short=True), progress=False)["by_length"]
    assert short["256"] == {"samples": 4, "token_accuracy": 14 / 15, "second_half": 7 / 8, "last_token": 0.0,
                            "exact": 0.0, "by_position": [1.0] * 14 + [0.0], "control_samples": 4,
                            "control_accuracy": 0.0}
    # the fourth document is too short for 512; it still lends its first tokens to the others' controls
    assert (short["512"]["samples"], short["512"]["control_samples"]) == (3, 3)
    assert evaluate_copy(None, DOCS, [256], span=16, samples=4, predict=lambda ids, first: torch.full(
        (len(ids) - 1 - first,), -1), progress=False)["by_length"]["256"]["token_accuracy"] == 0.0


def test_the_control_scores_a_predictor_that_needs_no_original_as_high_as_the_copy():
    """These documents count up by one: "the last token + 1" predicts every token right without reading anything,
    the copy included. The control says so; the copy eval alone would credit it with perfect copying."""
    count_up = evaluate_copy(None, DOCS, [256], span=16, samples=4, progress=False,
                             predict=lambda ids, first: ids[first:-1] + 1)["by_length"]["256"]
    assert count_up["token_accuracy"] == 1.0 and count_up["control_accuracy"] == 1.0


def test_the_control_replaces_the_original_with_the_next_long_enough_document():
    ids, source = copy_sample(DOCS[0], 512, 32, np.random.default_rng(0))
    docs = [DOCS[0], DOCS[1][:source + 31], DOCS[2]]  # the second is one token too short
    control = control_sample(ids, source, 32, docs, 0)
    assert control == ids[:source] + DOCS[2][source:source + 32] + ids[source + 32:]
    assert control_sample(ids, source, 32, docs[:1], 0) is None  # no other document


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_hypenet])
def test_greedy_predictions_are_the_full_forwards_argmax(make_model):
    model = make_model(tiny_tokenizer()).double()
    ids = torch.randint(0, model.config.vocab_size, (40,), generator=torch.Generator().manual_seed(0))
    expected = model(ids[None]).logits[0, 30:-1].argmax(-1)
    assert torch.equal(greedy_predictions(model, ids, 30), expected)


def test_eval_copy_from_the_command_line_writes_a_table_and_a_plot(model_dir, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HOME", str(tmp_path))  # hypenet.data caches tokenised corpora under ~/.cache
    source = write_source(tmp_path)
    out = tmp_path / "eval"
    assert main([str(model_dir), "--evals", "copy", "--copy-lengths", "64,128", "--copy-span", "8",
                 "--copy-samples", "3", "--ppl-source", str(source), "--ppl-heldout-fraction", "0.3",
                 "--device", "cpu", "--out", str(out), "--label", "tiny", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    cells = results["copy"]["by_length"]
    assert results["copy"]["span"] == 8 and set(cells) == {"64", "128"}
    assert all(c["samples"] > 0 and 0 <= c["token_accuracy"] <= 1 for c in cells.values())
    assert all(c["control_samples"] == c["samples"] and 0 <= c["control_accuracy"] <= 1 for c in cells.values())
    report = (out / "report.md").read_text()
    assert "## Copying a span read earlier (%)" in report and "| length | tiny |" in report
    assert report.count("; without it ") == 3  # the control, in each length's cell and in the total
    right, scored = copy_tokens_right(results["copy"])
    assert scored == sum(c["samples"] for c in cells.values()) * 7
    assert f"| all lengths: tokens right | {right} of {scored}; without it " in report
    assert (out / "copy_accuracy_vs_length.png").is_file()
    with pytest.raises(InvalidInputError, match=r"at least 8 x --copy-span \(256\); got span 32, lengths \[128\]"):
        main([str(model_dir), "--evals", "copy", "--copy-lengths", "128,512", "--device", "cpu", "--out", str(out),
              "--no-progress"])
