"""hypenet.eval.niah_forced: NIAH answers scored with the answer given (teacher forcing)."""

import json
import math
from collections import Counter

import pytest
import torch
from test_eval_cli import model_dir  # noqa: F401  (the module-scoped fixture)
from test_eval_tiny import HAYSTACK_DOCS, tiny_hypenet, tiny_llama, tiny_tokenizer

from hypenet.errors import InvalidInputError
from hypenet.eval.__main__ import main
from hypenet.eval.niah import build_niah_sample
from hypenet.eval.niah_forced import (
    FIRST_TOKENS_KEPT,
    answer_ids,
    answer_logits,
    evaluate_forced,
    score_answer,
    summarize_forced,
)


@pytest.mark.parametrize("task", ["single_1", "single_3"])
def test_the_answer_is_a_space_and_the_value_after_the_prompt_as_encoded(task):
    tokenizer = tiny_tokenizer()
    sample = build_niah_sample(tokenizer, task, 400, 0.5, seed=3, haystack_docs=HAYSTACK_DOCS)
    prompt, answer, first = answer_ids(tokenizer, sample)
    assert prompt == tokenizer(sample.prompt)["input_ids"] and len(prompt) == sample.n_tokens
    assert tokenizer.decode(answer) == " " + sample.value
    # `first` is the token that holds the value's first character: what comes before it is the space alone
    assert tokenizer.decode(answer[:first]).strip() == ""
    begun = tokenizer.decode(answer[:first + 1]).strip()
    assert begun and sample.value.startswith(begun)


def test_another_answer_form_begins_the_value_after_its_own_words():
    tokenizer = tiny_tokenizer()
    sample = build_niah_sample(tokenizer, "single_1", 400, 0.5, seed=3)
    prompt, answer, first = answer_ids(tokenizer, sample, ": {value}")
    assert tokenizer.decode(answer) == ": " + sample.value
    assert tokenizer.decode(answer[:first]).strip() == ":"  # the colon (and the space) come before the value
    assert sample.value.startswith(tokenizer.decode(answer[:first + 1]).strip(": "))
    with pytest.raises(ValueError, match="must hold {value} once"):
        answer_ids(tokenizer, sample, "the answer")


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_hypenet])
def test_answer_logits_are_the_full_forwards_logits_at_the_answers_positions(make_model):
    model = make_model(tiny_tokenizer()).double()
    ids = torch.randint(0, model.config.vocab_size, (50,), generator=torch.Generator().manual_seed(0)).tolist()
    expected = model(torch.tensor([ids])).logits[0, 39:-1]
    got = answer_logits(model, ids[:40], ids[40:])
    assert got.dtype == torch.float32 and got.shape == (10, model.config.vocab_size)
    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=1e-6)


def one_hot_logits(predicted: list[int], vocab: int = 12) -> torch.Tensor:
    logits = torch.zeros(len(predicted), vocab)
    logits[torch.arange(len(predicted)), torch.tensor(predicted)] = 5.0
    return logits


def test_scores_of_a_copy_that_begins_stops_short_or_never_begins():
    answer, first = [1, 4, 5, 6, 7], 1  # a space token, then the value's four tokens
    right = score_answer(one_hot_logits(answer), answer, first)
    assert {k: right[k] for k in ("answer_tokens", "start", "first_rank", "rest", "exact", "hits")} == {
        "answer_tokens": 5, "start": True, "first_rank": 0, "rest": 1.0, "exact": True, "hits": [True] * 5}
    short = score_answer(one_hot_logits([1, 4, 5, 6, 0]), answer, first)  # the last token wrong
    assert (short["start"], short["rest"], short["exact"], short["first_rank"]) == (True, 2 / 3, False, 0)
    # the space predicted, then another first character: one token above the value's (rank 1), ten tie with it
    prose = score_answer(one_hot_logits([1, 9, 5, 6, 7]), answer, first)
    assert (prose["start"], prose["rest"], prose["exact"], prose["first_rank"]) == (False, 1.0, False, 1)
    assert prose["first_logprob"] == pytest.approx(-math.log(math.exp(5) + 11), abs=1e-6)  # logits 5 and 0 x 11
    no_space = score_answer(one_hot_logits([3, 4, 5, 6, 7]), answer, first)  # the value's token right, the space not
    assert (no_space["start"], no_space["exact"]) == (False, False)
    one_token = score_answer(one_hot_logits([4]), [4], 0)  # a value in one token has no later tokens
    assert (one_token["start"], one_token["rest"], one_token["exact"]) == (True, None, True)


def test_summary_per_task_and_length():
    def record(task, length, start, rank, rest, exact):
        return {"task": task, "context_len": length, "start": start, "first_rank": rank, "rest": rest, "exact": exact}

    records = [record("single_3", 4096, True, 0, 1.0, True), record("single_3", 4096, False, 7, 0.5, False),
               record("single_3", 8192, False, 3, None, False), record("single_1", 4096, True, 0, 0.75, False)]
    for r, choice in zip(records, [" ", " the", " ", None]):
        if choice:  # the last as from before `choice` was recorded
            r["choice"] = choice
    summary = summarize_forced(records)
    assert summary["num_samples"] == 4
    assert summary["tasks"]["single_3"]["by_length"] == {
        "4096": {"samples": 2, "start": 0.5, "first_rank_median": 3.5, "rest": 0.75, "exact": 0.5},
        "8192": {"samples": 1, "start": 0.0, "first_rank_median": 3, "rest": None, "exact": 0.0}}
    overall = {k: v for k, v in summary["tasks"]["single_3"].items() if k != "by_length"}
    assert overall == {"samples": 3, "start": 1 / 3, "first_rank_median": 3, "rest": 0.75, "exact": 1 / 3,
                       "choices": [[" ", 2], [" the", 1]]}
    assert summary["tasks"]["single_1"]["exact"] == 0.0 and summary["tasks"]["single_1"]["choices"] == []


def test_evaluate_forced_keeps_the_samples_order_and_where_they_stand():
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer)
    samples = [build_niah_sample(tokenizer, "single_1", length, 0.5, seed=i) for i, length in enumerate((240, 320))]
    records = evaluate_forced(model, tokenizer, samples, progress=False)
    assert [(r["context_len"], r["seed"], r["value"]) for r in records] == [(240, 0, samples[0].value),
                                                                           (320, 1, samples[1].value)]
    prompt, answer, first = answer_ids(tokenizer, samples[1])
    logits = answer_logits(model, prompt, answer)
    assert records[1]["hits"] == score_answer(logits, answer, first)["hits"]
    assert records[1]["choice"] == tokenizer.decode([int(logits[0].argmax())])


def test_eval_niah_forced_from_the_command_line(model_dir, tmp_path):  # noqa: F811
    out = tmp_path / "eval"
    assert main([str(model_dir), "--evals", "niah,niah_forced", "--tasks", "single_1", "--niah-lengths", "240,320",
                 "--niah-depths", "0,1", "--niah-samples", "2", "--device", "cpu", "--out", str(out), "--label",
                 "tiny", "--no-progress", "--niah-cache", "none"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["timing_s"]["niah_forced_phases"]) == {"build_s", "score_s"}
    cells = results["niah_forced"]["tasks"]["single_1"]["by_length"]
    assert set(cells) == {"240", "320"} and all(c["samples"] == 4 for c in cells.values())
    forced = [json.loads(line) for line in (out / "niah_forced_samples.jsonl").read_text().splitlines()]
    generated = [json.loads(line) for line in (out / "niah_samples.jsonl").read_text().splitlines()]
    # the same grid: each forced row is a generated one's sample
    assert sorted((r["context_len"], r["depth"], r["seed"], r["value"]) for r in forced) == \
        sorted((r["context_len"], r["depth"], r["seed"], r["value"]) for r in generated)
    report = (out / "report.md").read_text()
    assert "## NIAH answers given (teacher forcing, %)" in report and "| length | tiny |" in report
    assert report.count("(rank ") == 3  # two lengths and "all"
    # the first tokens the model would write, counted over the samples
    firsts = Counter(r["choice"] for r in forced).most_common(FIRST_TOKENS_KEPT)
    assert results["niah_forced"]["tasks"]["single_1"]["choices"] == [[token, n] for token, n in firsts]
    assert ("First token each model would write (samples, all lengths): tiny: "
            + ", ".join(f"`{token!r}` {n}" for token, n in firsts) + ".") in report
    assert results["niah_forced"]["answer"] == " {value}" and "With the answer ' {value}' appended" in report

    colon = tmp_path / "colon"  # the needle's own form
    assert main([str(model_dir), "--evals", "niah_forced", "--forced-answer", ": {value}", "--tasks", "single_1",
                 "--niah-lengths", "240", "--niah-depths", "0", "--niah-samples", "1", "--device", "cpu", "--out",
                 str(colon), "--no-progress", "--niah-cache", "none"]) == 0
    row = json.loads((colon / "niah_forced_samples.jsonl").read_text())
    assert row["answer_tokens"] == len(tiny_tokenizer()(": " + row["value"])["input_ids"])
    assert json.loads((colon / "results.json").read_text())["niah_forced"]["answer"] == ": {value}"
    with pytest.raises(InvalidInputError, match="--forced-answer must hold {value} once"):
        main([str(model_dir), "--evals", "niah_forced", "--forced-answer", ":", "--device", "cpu", "--out",
              str(colon), "--no-progress"])
