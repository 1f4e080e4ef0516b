"""NIAH: prompt building (needle, depth, length, values), scoring, summaries, batched generation."""

import re
import uuid

import pytest
from test_eval_tiny import HAYSTACK_DOCS, tiny_hypenet, tiny_llama, tiny_tokenizer

from hypenet.eval.niah import (
    NIAH_TASKS,
    SINGLE_TASKS,
    accuracy_interval,
    build_niah_grid,
    build_niah_sample,
    fisher_exact_p,
    generate_answers,
    needle_sentence,
    sample_records,
    sample_seed,
    score,
    split_sentences,
    summarize,
)

TASKS = list(SINGLE_TASKS)  # (the tasks with more needles: test_multi_needle_tasks_*)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def haystack_of(sample):
    """The haystack part of a plain-text prompt: between the instruction and the question."""
    return sample.prompt.split("\n\n", 1)[1].rsplit("\n\n", 1)[0]


def test_split_sentences_keeps_the_text():
    text = "First one. Second?  Third!\n\nFourth without end"
    assert split_sentences(text) == ["First one. ", "Second?  ", "Third!\n\n", "Fourth without end"]
    assert "".join(split_sentences(text)) == text


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_exactly_one_needle_at_the_requested_depth(tokenizer, task, depth):
    sample = build_niah_sample(tokenizer, task, 600, depth, seed=7, haystack_docs=HAYSTACK_DOCS)
    needle = needle_sentence(NIAH_TASKS[task], sample.key, sample.value)
    assert sample.prompt.count(needle) == 1
    assert sample.prompt.count(sample.value) == 1
    haystack = haystack_of(sample)
    before, after = haystack.split(needle)
    n_before = len(tokenizer(before, add_special_tokens=False)["input_ids"])
    n_after = len(tokenizer(after, add_special_tokens=False)["input_ids"])
    measured = n_before / (n_before + n_after)
    # Sentence boundaries are at most one sentence (< 30 tokens here) from the requested point.
    assert abs(measured - depth) < 30 / (n_before + n_after)
    assert abs(sample.needle_depth - depth) < 30 / (n_before + n_after)
    # The needle stands between sentences, never inside one.
    assert before == "" or before.endswith((". ", "! ", "? ", "\n\n"))


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("length", [200, 512, 1000, 3000])
def test_prompt_length_within_two_percent(tokenizer, task, length):
    sample = build_niah_sample(tokenizer, task, length, 0.5, seed=length, haystack_docs=HAYSTACK_DOCS)
    n_tokens = len(tokenizer(sample.prompt)["input_ids"])
    assert n_tokens == sample.n_tokens
    assert abs(n_tokens - length) <= 0.02 * length


def test_prompt_ends_with_question_and_answer_prefix(tokenizer):
    sample = build_niah_sample(tokenizer, "single_2", 400, 0.5, seed=1, haystack_docs=HAYSTACK_DOCS)
    assert sample.prompt.endswith(
        f"What is the special magic number for {sample.key} mentioned in the provided text? "
        f"The special magic number for {sample.key} mentioned in the provided text is")


def test_values_are_seeded_and_unique(tokenizer):
    grid = dict(tasks=TASKS, lengths=[300, 400], depths=[0.0, 0.5, 1.0], samples_per_cell=3,
                haystack_docs=HAYSTACK_DOCS)
    first = build_niah_grid(tokenizer, seed=0, **grid)
    again = build_niah_grid(tokenizer, seed=0, **grid)
    other = build_niah_grid(tokenizer, seed=1, **grid)
    assert [s.prompt for s in first] == [s.prompt for s in again]
    assert [s.value for s in first] != [s.value for s in other]
    values = [s.value for s in first]
    assert len(set(values)) == len(values) == 3 * 2 * 3 * 3
    for sample in first:
        if NIAH_TASKS[sample.task].value_kind == "digits":
            assert re.fullmatch(r"[1-9]\d{6}", sample.value)
        else:
            assert str(uuid.UUID(sample.value)) == sample.value


def test_threads_build_the_grid_that_one_sample_at_a_time_builds(tokenizer):
    """Keys and values are drawn in grid order before the prompts are built in threads: the grid is the same as
    build_niah_sample's, one sample after another with one set of used values, for any number of threads."""
    lengths, depths = [300, 400], [0.0, 0.5, 1.0]
    used: set[str] = set()
    one_by_one = [build_niah_sample(tokenizer, task, length, depth, sample_seed(0, task, length, depth, i),
                                    HAYSTACK_DOCS, False, used)
                  for task in TASKS for length in lengths for depth in depths for i in range(2)]
    for workers in (1, 4):
        assert build_niah_grid(tokenizer, TASKS, lengths, depths, 2, seed=0, haystack_docs=HAYSTACK_DOCS,
                               workers=workers) == one_by_one


def test_grid_cache_returns_the_same_samples_without_rebuilding(tokenizer, tmp_path, monkeypatch):
    import hypenet.eval.niah as niah

    grid = dict(tasks=TASKS, lengths=[300], depths=[0.0, 1.0], samples_per_cell=2, haystack_docs=HAYSTACK_DOCS)
    built = build_niah_grid(tokenizer, seed=0, cache_dir=tmp_path, **grid)
    assert len(list(tmp_path.glob("niah-*.json.gz"))) == 1 and not list(tmp_path.glob("*.tmp"))

    def fail(*args, **kwargs):
        raise AssertionError("a cached grid must not be rebuilt")

    monkeypatch.setattr(niah, "_build_sample", fail)
    assert build_niah_grid(tokenizer, seed=0, cache_dir=tmp_path, **grid) == built
    for changed in (dict(seed=1), dict(haystack_docs=HAYSTACK_DOCS[:-1]), dict(lengths=[320])):
        with pytest.raises(AssertionError, match="must not be rebuilt"):  # another key: built afresh
            build_niah_grid(tokenizer, cache_dir=tmp_path, **{**grid, "seed": 0, **changed})


def test_used_values_forces_a_fresh_value(tokenizer):
    first = build_niah_sample(tokenizer, "single_1", 200, 0.5, seed=3)
    second = build_niah_sample(tokenizer, "single_1", 200, 0.5, seed=3, used_values={first.value})
    assert second.value != first.value


def test_document_tasks_need_documents(tokenizer):
    with pytest.raises(ValueError, match="single_1"):
        build_niah_sample(tokenizer, "single_2", 300, 0.5, seed=0, haystack_docs=None)


def test_chat_template_wraps_the_question_and_keeps_the_answer_prefix(tokenizer):
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    try:
        sample = build_niah_sample(tokenizer, "single_1", 400, 0.5, seed=2, chat_template=True)
    finally:
        tokenizer.chat_template = None
    assert sample.prompt.startswith("<|user|>")
    assert "provided text?<|end|><|assistant|>The special magic number for" in sample.prompt
    assert not sample.add_special_tokens
    assert abs(sample.n_tokens - 400) <= 8


def test_score_on_crafted_outputs(tokenizer):
    digits = build_niah_sample(tokenizer, "single_1", 300, 0.5, seed=5)
    value = digits.value
    assert score(digits, f" {value}.")
    assert score(digits, f": {value}\nWhat else")
    assert not score(digits, f" {value[:-1]}.")
    assert not score(digits, f" {value[:3]} {value[3:]}")
    assert not score(digits, "")
    uuid_sample = build_niah_sample(tokenizer, "single_3", 300, 0.5, seed=5, haystack_docs=HAYSTACK_DOCS)
    assert score(uuid_sample, f" {uuid_sample.value}.")
    assert not score(uuid_sample, f" {uuid_sample.value[:-4]}")


NEEDLE_START = re.compile(r"One of the special magic (?:number|uuid)s for (\S+) is: (\S+?)\.(?:\s|$)")
MULTI = [name for name in NIAH_TASKS if name not in SINGLE_TASKS]


def needles_in(sample):
    """(key, value) of every needle sentence in the prompt's haystack, in order."""
    return NEEDLE_START.findall(haystack_of(sample))


@pytest.mark.parametrize("task", MULTI)
def test_multi_needle_tasks_place_their_needles_as_ruler_does(tokenizer, task):
    spec = NIAH_TASKS[task]
    sample = build_niah_sample(tokenizer, task, 1500, 0.5, seed=11, haystack_docs=HAYSTACK_DOCS)
    assert abs(sample.n_tokens - 1500) <= 0.02 * 1500
    needles = needles_in(sample)
    asked_keys = sample.keys or [sample.key]
    answers = sample.answers or [sample.value]
    assert len(asked_keys) == spec.queries and len(answers) == spec.answers == len(set(answers))
    asked = [(k, v) for k, v in needles if k in asked_keys]
    assert sorted(v for _, v in asked) == sorted(answers)  # every asked value is in the haystack, once
    others = [(k, v) for k, v in needles if k not in asked_keys]
    assert not {v for _, v in others} & set(answers)  # no other needle holds an asked value
    if spec.haystack == "needles":  # the haystack is needles and nothing else
        left = NEEDLE_START.sub("", haystack_of(sample)).strip()
        assert len(needles) > 10  # the whole haystack, then the cut needle that fills the budget, nothing else
        keys = [k for k, _ in needles]
        assert len(set(keys)) == len(keys)  # no key twice while the key space allows
        if spec.key_kind == "words3":  # the asked key looks like every other
            assert all(re.fullmatch(r"[a-z]+-[a-z]+-[a-z]+", k) for k in keys)
        assert left.startswith(f"One of the special magic {spec.value_noun}s for") and "\n" not in left
    else:
        assert len(others) == spec.distractors == len({k for k, _ in others})  # distractors' keys differ too
    if spec.key_kind == "uuid":
        assert all(str(uuid.UUID(k)) == k and str(uuid.UUID(v)) == v for k, v in needles)
    # The first asked needle lands at the requested depth: within one sentence of it.
    assert abs(sample.needle_depth - 0.5) < 0.06
    assert f"One of the special magic {spec.value_noun}s for {sample.key} is: {sample.value}." in sample.prompt
    if spec.answers == 1:
        assert sample.prompt.endswith(f"The special magic {spec.value_noun} for {sample.key} mentioned in the "
                                      "provided text is")
    else:
        named = asked_keys[0] if len(asked_keys) == 1 else ", ".join(asked_keys[:-1]) + " and " + asked_keys[-1]
        assert sample.prompt.endswith(f"What are all the special magic numbers for {named} mentioned in the "
                                      f"provided text? The special magic numbers for {named} mentioned in the "
                                      "provided text are")
        assert "you will be asked for some of them at the end." in sample.prompt


def test_multi_needle_values_are_unique_across_a_grid(tokenizer):
    grid = build_niah_grid(tokenizer, ["multivalue", "multiquery", "single_1"], [1200], [0.0, 1.0], 2,
                           haystack_docs=HAYSTACK_DOCS)
    asked = [value for sample in grid for value in (sample.answers or [sample.value])]
    assert len(asked) == 2 * 2 * (4 + 4 + 1) == len(set(asked))


def test_several_values_score_by_the_share_found(tokenizer):
    sample = build_niah_sample(tokenizer, "multivalue", 1200, 0.5, seed=3, haystack_docs=HAYSTACK_DOCS)
    a, b, c, d = sample.answers
    outputs = [f" {a}, {b}, {c} and {d}.", f" {d}\n{b}", f" {a}", " none", f" {a}, {b}, {c}, {d[:-1]}"]
    records = sample_records([sample] * len(outputs), outputs)
    assert [r["recall"] for r in records] == [1.0, 0.5, 0.25, 0.0, 0.75]
    assert [r["correct"] for r in records] == [True, False, False, False, False]
    assert records[0]["answers"] == [a, b, c, d] and "keys" not in records[0]
    summary = summarize(records)
    assert summary["tasks"]["multivalue"]["accuracy"] == pytest.approx(0.5)  # RULER's mean share, not all-or-none
    single = sample_records([build_niah_sample(tokenizer, "single_1", 300, 0.5, seed=3)], ["x"])[0]
    assert "recall" not in single and "answers" not in single and "keys" not in single


def test_needles_at_one_boundary_keep_their_order():
    from hypenet.eval.niah import _insert_needles

    sentences, counts = ["A b. ", "C d. ", "E f."], [3, 3, 3]
    text, landed = _insert_needles(sentences, counts, " g", [("N1.", 0.5), ("N2.", 0.4), ("N3.", 1.0)])
    # (a needle at the end goes before the cut sentence that fills the budget, as a single needle always has)
    assert text == "A b. N1. N2. C d. E f. N3.  g"
    assert landed == pytest.approx(3 / 9)  # where the first needle landed
    assert _insert_needles(sentences, counts, "", [("N1.", 0.0)]) == ("N1. A b. C d. E f.", 0.0)


def test_summarize_accuracy_and_averages():
    def record(task, length, depth, correct):
        return {"task": task, "context_len": length, "depth": depth, "correct": correct}

    records = [
        record("single_1", 1024, 0.0, True), record("single_1", 1024, 0.0, False),  # cell 0.5
        record("single_1", 1024, 1.0, True),  # cell 1.0 -> length 0.75
        record("single_1", 2048, 0.0, False), record("single_1", 2048, 1.0, False),  # length 0.0
        record("single_2", 1024, 0.0, True), record("single_2", 1024, 1.0, True),  # length 1.0
    ]
    summary = summarize(records)
    single_1 = summary["tasks"]["single_1"]
    assert single_1["by_length"]["1024"]["by_depth"] == {"0": 0.5, "1": 1.0}
    assert single_1["by_length"]["1024"]["accuracy"] == 0.75
    assert single_1["accuracy"] == pytest.approx(0.375)
    assert summary["tasks"]["single_2"]["accuracy"] == 1.0
    assert summary["by_length"] == {"1024": pytest.approx(0.875), "2048": 0.0}
    assert summary["average"] == pytest.approx(0.4375)
    assert summary["num_samples"] == 7
    assert single_1["by_length"]["1024"]["samples"] == 3 and single_1["by_length"]["2048"]["samples"] == 2


@pytest.mark.parametrize("correct, answers, expected", [
    # scipy.stats.binomtest(correct, answers).proportion_ci(method="wilson"), scipy 1.16
    (45, 90, (0.3988372282354734, 0.6011627717645266)),
    (0, 10, (0.0, 0.27753279986288926)),
    (10, 10, (0.7224672001371109, 1.0)),
    (27, 30, (0.7437891742081592, 0.9654001112526657)),
])
def test_accuracy_interval_is_wilsons(correct, answers, expected):
    assert accuracy_interval(correct / answers, answers) == pytest.approx(expected, abs=1e-12)


def test_accuracy_interval_narrows_with_answers_and_needs_one():
    low_30, high_30 = accuracy_interval(0.5, 30)
    low_90, high_90 = accuracy_interval(0.5, 90)
    assert low_30 < low_90 < 0.5 < high_90 < high_30
    with pytest.raises(ValueError, match="at least one answer"):
        accuracy_interval(0.5, 0)


@pytest.mark.parametrize("right_a, answers_a, right_b, answers_b, expected", [
    # scipy.stats.fisher_exact([[right_a, answers_a - right_a], [right_b, answers_b - right_b]]).pvalue, scipy 1.17
    (3, 4, 1, 4, 0.48571428571428565),  # Fisher's tea tasting: 34 / 70
    (151, 450, 200, 450, 0.0010236075110606625),
    (78, 150, 120, 150, 4.457469960204067e-07),
    (0, 10, 10, 10, 1.082508822446903e-05),
    (19, 60, 3, 60, 0.0002467346509378469),
    (3, 150, 3, 150, 1.0),
    (5, 10, 5, 12, 1.0),
])
def test_fisher_exact_p_is_fishers_two_sided_test(right_a, answers_a, right_b, answers_b, expected):
    assert fisher_exact_p(right_a, answers_a, right_b, answers_b) == pytest.approx(expected, rel=1e-12)
    # the test does not depend on which model is called a
    assert fisher_exact_p(right_b, answers_b, right_a, answers_a) == pytest.approx(expected, rel=1e-12)


def test_fisher_exact_p_refuses_impossible_counts():
    with pytest.raises(ValueError, match="11 right of 10 answers"):
        fisher_exact_p(11, 10, 3, 10)
    with pytest.raises(ValueError, match="0 right of 0 answers: each model needs answers"):
        fisher_exact_p(3, 10, 0, 0)


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_hypenet])
def test_batched_generation_scores_like_one_at_a_time(tokenizer, make_model):
    model = make_model(tokenizer)
    samples = build_niah_grid(tokenizer, ["single_1", "single_3"], [260, 300, 410], [0.6], 1, seed=4,
                              haystack_docs=HAYSTACK_DOCS)
    single = generate_answers(model, tokenizer, samples, batch_size=1, progress=False)
    batched = generate_answers(model, tokenizer, samples, batch_size=4, progress=False)
    assert batched == single
    # A random model rarely recalls; make the agreement about scores meaningful with a planted right answer.
    planted = [s.value if i % 2 else o for i, (s, o) in enumerate(zip(samples, batched))]
    assert [r["correct"] for r in sample_records(samples, planted)] == [bool(i % 2) or score(s, o) for i, (s, o) in
                                                                       enumerate(zip(samples, single))]


def test_batches_respect_the_token_cap(tokenizer):
    from hypenet.eval.niah import _batches

    samples = build_niah_grid(tokenizer, ["single_1"], [250, 400, 600], [0.0, 1.0], 2, seed=0)
    batches = _batches(samples, batch_size=3, max_batch_tokens=1300)
    assert sorted(i for b in batches for i in b) == list(range(len(samples)))
    for batch in batches:
        lengths = [samples[i].n_tokens for i in batch]
        assert lengths == sorted(lengths, reverse=True)
        assert len(batch) <= 3 and (len(batch) == 1 or lengths[0] * len(batch) <= 1300)


def test_padded_batches_keep_their_dense_mask_under_the_cap(tokenizer, monkeypatch):
    from hypenet.eval import niah
    from hypenet.eval.niah import _batches

    samples = build_niah_grid(tokenizer, ["single_1", "single_2"], [400], [0.0, 0.5, 1.0], 2, seed=0,
                              haystack_docs=HAYSTACK_DOCS)
    lengths = sorted({s.n_tokens for s in samples})
    assert len(lengths) > 1  # real-text haystacks: prompts of different lengths, so batches are padded
    longest = lengths[-1]
    batches = _batches(samples, batch_size=16, max_batch_tokens=None, max_mask_elements=3 * longest**2)
    assert sorted(i for b in batches for i in b) == list(range(len(samples)))
    for batch in batches:
        rows = [samples[i].n_tokens for i in batch]
        assert len(set(rows)) == 1 or len(rows) * rows[0] ** 2 <= 3 * longest**2
    assert max(map(len, batches)) > 1
    # prompts of one length need no mask: the cap leaves them batched
    same = [s for s in samples if s.n_tokens == samples[0].n_tokens] * 4
    assert _batches(same, batch_size=64, max_batch_tokens=None, max_mask_elements=1) == [list(range(len(same)))]
    # transformers models get the cap, HypeNet (row-by-row attention for padded rows) does not
    seen = []
    monkeypatch.setattr(niah, "_batches", lambda *args: seen.append(args[3]) or [])
    niah.generate_answers(tiny_llama(tokenizer), tokenizer, samples, progress=False)
    niah.generate_answers(tiny_hypenet(tokenizer), tokenizer, samples, progress=False)
    assert seen == [niah.MAX_PADDED_MASK_ELEMENTS, None]


def test_batches_never_mix_answer_budgets(tokenizer):
    from hypenet.eval.niah import _batches

    samples = build_niah_grid(tokenizer, TASKS, [300, 400], [0.0, 1.0], 2, seed=0, haystack_docs=HAYSTACK_DOCS)
    assert {s.max_new_tokens for s in samples} == {12, 64}
    batches = _batches(samples, batch_size=16, max_batch_tokens=None)
    assert sorted(i for b in batches for i in b) == list(range(len(samples)))
    assert all(len({samples[i].max_new_tokens for i in batch}) == 1 for batch in batches)
    assert len(batches) == 2  # one batch per budget: digits (single_1, single_2) and UUIDs (single_3)


class _NoTokens:
    """A tokenizer that turns every text into no tokens, as transformers builds one for a folder without tokenizer
    files."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, texts, **kwargs):
        return {"input_ids": [[] for _ in texts] if isinstance(texts, list) else []}


@pytest.mark.parametrize("task", ["single_1", "single_2", "multikey_2"])  # filler, documents, other needles
def test_a_tokenizer_giving_no_tokens_is_refused_not_looped_on(tokenizer, task):
    from hypenet.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="the tokenizer turns the haystack into no tokens"):
        build_niah_sample(_NoTokens(tokenizer), task, 300, 0.5, seed=0, haystack_docs=HAYSTACK_DOCS)
