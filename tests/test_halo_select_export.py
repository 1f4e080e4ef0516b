"""HALO layer selection, the logit-scaling choice, export and the report, on tiny random Qwen3 teachers."""

import copy
import json
import logging
import sys
import warnings

import matplotlib
import matplotlib.pyplot
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_without_hypenet
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from hypenet.eval.perplexity import token_nlls
from hypenet.halo import probes as probes_module
from hypenet.halo.export import (
    NearTieWarning,
    band_label,
    best_copy_within,
    choose_logit_scaling_base,
    export_checkpoint,
    far_copies,
    far_copy_docs,
    far_copy_loss,
    most_scaling_within,
    position_bands,
    scaling_label,
)
from hypenet.halo.probes import build_probes
from hypenet.halo.report import report_figure, write_report
from hypenet.halo.select import (
    SCORE_CLIP,
    SelectionResult,
    even_layers,
    halo_scores,
    needle_attention,
    probe_sweep,
    select_layers,
    swap_attention,
    top_k_layers,
)
from hypenet.teachers import build_hypenet_from_teacher, hypenet_config_from_teacher, lightning_from_teacher

LAYERS = 8
TEXT_WORDS = "a the of and to in is was it for on with as at by this that from water light city small old new".split()


def make_tokenizer() -> PreTrainedTokenizerFast:
    texts = (probes_module.NEEDLE_PREFIX, probes_module.FILLER_TEXT)
    words = {w for text in texts for w in text.replace(".", " ").split()}
    words |= set(probes_module.KEY_WORDS) | set(TEXT_WORDS)
    vocab = ["[UNK]", "<eos>", ".", *[str(d) for d in range(10)], *sorted(words)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", eos_token="<eos>", pad_token="<eos>")


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def teacher(tokenizer):
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen3ForCausalLM(config).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def stage1_layers(teacher):
    torch.manual_seed(1)
    config = hypenet_config_from_teacher(teacher.config)
    return {i: lightning_from_teacher(teacher, i, config) for i in range(LAYERS)}


@pytest.fixture(scope="module")
def heldout_docs(tokenizer):
    rng = np.random.default_rng(0)
    return [rng.integers(13, len(tokenizer), size=n) for n in (150, 90, 200)]


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


# ---- scores and strategies -----------------------------------------------------------------------------------


def test_halo_scores_formula_eps_and_clip():
    recall = {0: 0.2, 1: 0.9, 2: 0.5, 3: 0.5, 4: 0.9 - 1e-12}
    commonsense = {0: 0.1, 1: 0.8, 2: 0.9, 3: 0.7, 4: 0.9}
    scores = halo_scores(recall, commonsense)
    assert scores[0] == pytest.approx(0.7 / 0.8)
    assert scores[1] == 0.0  # the max-recall layer costs no recall
    assert scores[2] == SCORE_CLIP == 50.0  # recall drop with no commonsense drop: 0.4 / 1e-10, clipped
    assert scores[3] == pytest.approx(0.4 / 0.2)
    assert scores[4] == pytest.approx(1e-12 / 1e-10, rel=1e-3)  # eps in the denominator, not a division by zero


def test_top_k_selection_and_ties():
    scores = {0: 0.875, 1: 0.0, 2: 50.0, 3: 2.0, 4: 0.01}
    recall = {0: 0.2, 1: 0.9, 2: 0.5, 3: 0.5, 4: 0.9}
    assert top_k_layers(scores, recall, 2) == [2, 3]
    assert top_k_layers(scores, recall, 3) == [0, 2, 3]
    # two layers at the clip: the larger recall drop wins, then the lower index
    assert top_k_layers({0: 50.0, 1: 50.0, 2: 50.0}, {0: 0.6, 1: 0.3, 2: 0.3}, 1) == [1]
    assert top_k_layers({0: 50.0, 1: 50.0, 2: 50.0}, {0: 0.6, 1: 0.3, 2: 0.3}, 2) == [1, 2]


def test_even_strategy(teacher):
    assert even_layers(28, 7) == [2, 6, 10, 14, 18, 22, 26]
    assert even_layers(30, 7) == [2, 6, 10, 15, 19, 23, 27]
    assert even_layers(8, 8) == list(range(8))
    result = select_layers(teacher, None, None, strategy="even")  # k = floor(8 / 4) = 2
    assert result.attention_layers == [2, 6]
    assert result.mixer_types() == ["lightning"] * 2 + ["attention"] + ["lightning"] * 3 + ["attention", "lightning"]
    assert select_layers(teacher, None, None, strategy="even", num_attention=3).attention_layers == [1, 4, 6]


def test_none_strategy_keeps_no_attention(teacher):
    result = select_layers(teacher, None, None, strategy="none")
    assert result.attention_layers == [] and result.mixer_types() == ["lightning"] * 8
    with pytest.raises(ValueError, match="keeps no attention layer"):
        select_layers(teacher, None, None, strategy="none", num_attention=2)


def test_manual_strategy_and_errors(teacher):
    result = select_layers(teacher, None, None, strategy="manual", manual_layers=[5, 0, 3])
    assert result.attention_layers == [0, 3, 5] and result.scores is None
    assert result.to_dict()["attention_layers"] == [0, 3, 5]
    with pytest.raises(ValueError, match=r"\[8, -1\] are out of range.*0\.\.7"):
        select_layers(teacher, None, None, strategy="manual", manual_layers=[1, 8, -1])
    with pytest.raises(ValueError, match=r"\[2\] are repeated"):
        select_layers(teacher, None, None, strategy="manual", manual_layers=[2, 4, 2])
    with pytest.raises(ValueError, match="needs manual_layers"):
        select_layers(teacher, None, None, strategy="manual")
    with pytest.raises(ValueError, match="num_attention=2 but 3 manual layers"):
        select_layers(teacher, None, None, strategy="manual", manual_layers=[1, 2, 3], num_attention=2)
    with pytest.raises(ValueError, match="unknown layer-selection strategy 'best'"):
        select_layers(teacher, None, None, strategy="best")
    with pytest.raises(ValueError, match="between 1 and the number of layers"):
        select_layers(teacher, None, None, strategy="even", num_attention=9)
    with pytest.raises(ValueError, match=r"missing layers \[3, 4, 5, 6, 7\]"):
        select_layers(teacher, None, {i: None for i in range(3)})
    with pytest.raises(ValueError, match="out of range"):
        SelectionResult([1, 7], "manual", 8).mixer_types(6)


# ---- swapping a layer ----------------------------------------------------------------------------------------


def test_swap_restores_teacher_and_changes_logits(teacher, stage1_layers):
    ids = torch.randint(0, teacher.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    before = logits(teacher, ids)
    attention = teacher.model.layers[3].self_attn
    with swap_attention(teacher, 3, stage1_layers[3]):
        swapped = logits(teacher, ids)
        assert "forward" in attention.__dict__
    after = logits(teacher, ids)
    assert "forward" not in attention.__dict__
    assert torch.equal(before, after)
    # an untrained lightning copy of the same attention is a different mixer: the logits must move
    assert not torch.allclose(before, swapped, atol=1e-4)


def test_swap_errors_restore_too(teacher, stage1_layers):
    ids = torch.randint(0, teacher.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    before = logits(teacher, ids)
    with pytest.raises(RuntimeError, match="boom"), swap_attention(teacher, 0, stage1_layers[0]):
        raise RuntimeError("boom")
    assert torch.equal(before, logits(teacher, ids))


def test_swap_generates_with_cache(teacher, stage1_layers):
    """Cached greedy decoding through a swapped layer equals recomputing the whole prefix at every step."""
    ids = torch.randint(0, teacher.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(2))
    with swap_attention(teacher, 2, stage1_layers[2]), torch.no_grad():
        cached = teacher.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = ids
        for _ in range(6):
            next_id = logits(teacher, uncached)[:, -1].argmax(-1, keepdim=True)
            uncached = torch.cat([uncached, next_id], dim=1)
    assert torch.equal(cached, uncached)


# ---- probes ---------------------------------------------------------------------------------------------------


def test_probes_are_seeded_and_well_formed(tokenizer, heldout_docs):
    kwargs = dict(recall_samples=3, context=128, commonsense_tokens=200)
    first = build_probes(tokenizer, heldout_docs, seed=7, **kwargs)
    again = build_probes(tokenizer, heldout_docs, seed=7, **kwargs)
    other = build_probes(tokenizer, heldout_docs, seed=8, **kwargs)
    assert torch.equal(first.input_ids, again.input_ids) and torch.equal(first.value_slots, again.value_slots)
    assert not torch.equal(first.input_ids[:3], other.input_ids[:3])
    assert first.input_ids.shape == (3 + 2, 128)  # ceil(200 / 128) text rows
    assert first.is_text.tolist() == [False] * 3 + [True] * 2
    digits = {tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)}
    assert set(first.value_tokens.tolist()) <= digits
    rows, positions = first.value_slots.T
    assert torch.equal(first.input_ids[rows, positions + 1], first.value_tokens)  # a slot predicts the next token
    assert len(first.value_tokens) == 3 * 2 * 6  # 128 // 64 keys per sample, 6 digits each
    # each question points at the needle it asks for: the needle ends with the 6 value digits and "." that follow
    # the question, after the question's last token
    assert first.lookups.shape == (3 * 2, 4) and first.lookups[:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    for row, position, start, end in first.lookups.tolist():
        ids = first.input_ids[row].tolist()
        assert ids[end - 7:end - 1] == ids[position + 1:position + 7] and ids[end - 8] == ids[position]
        assert ids[end - 1] == tokenizer.convert_tokens_to_ids(".") and end <= position
    # each scored value also appears earlier in its sample, as a needle
    for row in range(3):
        sample = first.input_ids[row].tolist()
        slots = positions[rows == row].tolist()
        value = sample[slots[0] + 1 : slots[5] + 2]
        assert any(sample[s : s + 6] == value for s in range(slots[0] - 6))


def test_question_probes_ask_in_other_words(tokenizer, heldout_docs):
    repeat = build_probes(tokenizer, heldout_docs, recall_samples=2, context=256, commonsense_tokens=64, seed=4)
    probes = build_probes(tokenizer, heldout_docs, recall_samples=2, context=256, commonsense_tokens=64, seed=4,
                          recall_style="question")
    assert probes.input_ids.shape == repeat.input_ids.shape
    assert len(probes.lookups) == len(repeat.lookups) == 2 * 4  # same keys per row: 256 // 64
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    for row, position, start, end in probes.lookups.tolist():
        ids = probes.input_ids[row].tolist()
        # the asked needle is "The special magic number for {key} is {value}." (6 value digits, then ".")
        [key] = [k for k in probes_module.KEY_WORDS
                 if ids[start:end - 7] == encode(probes_module.NEEDLE_PREFIX.format(key=k))]
        question = encode(probes_module.RECALL_QUESTIONS["question"].format(key=key))
        assert ids[position + 1 - len(question):position + 1] == question  # the question ends at the asking position
        assert ids[position + 1:position + 7] == ids[end - 7:end - 1]  # and the needle's value follows it
        assert ids[position - 2:position + 1] != ids[end - 10:end - 7]  # not after the needle's own last words
    rows, positions = probes.value_slots.T
    assert torch.equal(probes.input_ids[rows, positions + 1], probes.value_tokens)
    with pytest.raises(ValueError, match="unknown recall_style 'quiz'.*'repeat', 'question'"):
        build_probes(tokenizer, heldout_docs, recall_samples=1, context=256, recall_style="quiz")


def test_probes_without_heldout_use_filler_haystack(tokenizer, monkeypatch):
    monkeypatch.setattr(probes_module, "_builtin_documents", lambda tok, needed: [np.arange(13, 40)])
    probes = build_probes(tokenizer, None, recall_samples=1, context=96, commonsense_tokens=96)
    filler = set(tokenizer(probes_module.FILLER_TEXT, add_special_tokens=False).input_ids)
    assert filler <= set(probes.input_ids[0].tolist())


def test_probe_sweep_in_range_deterministic_and_replay_exact(teacher, tokenizer, stage1_layers, heldout_docs):
    probes = build_probes(tokenizer, heldout_docs, recall_samples=3, context=96, commonsense_tokens=150, seed=3)
    baseline, recall, commonsense = probe_sweep(teacher, probes, stage1_layers, batch_size=2, progress=False)
    again = probe_sweep(teacher, probes, stage1_layers, batch_size=5, progress=False)
    assert (baseline, recall, commonsense) == again  # seeded, and independent of the batching
    assert baseline["commonsense"] == 1.0 and 0 <= baseline["recall"] <= 1 and 0 <= baseline["next_token_accuracy"] <= 1
    assert set(recall) == set(commonsense) == set(range(LAYERS))
    assert all(0 <= v <= 1 for v in [*recall.values(), *commonsense.values()])
    assert min(commonsense.values()) < 1.0
    # replaying the recorded prefix gives exactly what a full forward pass of the swapped teacher gives
    head = teacher.get_output_embeddings()
    for i in (0, 5):
        with torch.no_grad():
            teacher_hidden = teacher.model(input_ids=probes.input_ids, use_cache=False).last_hidden_state
            _, teacher_top1 = probes.predict(teacher_hidden, head)
            with swap_attention(teacher, i, stage1_layers[i]):
                hidden = teacher.model(input_ids=probes.input_ids, use_cache=False).last_hidden_state
                hits, top1 = probes.predict(hidden, head)
        assert recall[i] == pytest.approx(float(hits.float().mean()), abs=1e-6)
        assert commonsense[i] == pytest.approx(float((top1 == teacher_top1).float().mean()), abs=1e-6)


def test_select_layers_halo(teacher, tokenizer, stage1_layers, heldout_docs):
    result = select_layers(
        teacher, tokenizer, stage1_layers, heldout_docs=heldout_docs, recall_samples=2, recall_context=96,
        commonsense_tokens=96, progress=False,
    )
    assert result.strategy == "halo" and len(result.attention_layers) == 2
    assert result.attention_layers == top_k_layers(result.scores, result.recall, 2)
    assert result.scores == halo_scores(result.recall, result.commonsense)
    assert result.settings["recall_context"] == 96 and result.settings["seconds"] >= 0
    assert json.loads(json.dumps(result.to_dict()))["attention_layers"] == result.attention_layers
    assert set(result.needle_attention) == set(range(LAYERS))
    assert all(0 < v <= 1 for v in result.needle_attention.values())
    asked = select_layers(
        teacher, tokenizer, stage1_layers, heldout_docs=heldout_docs, recall_samples=2, recall_context=96,
        commonsense_tokens=96, progress=False, recall_style="question",
    )
    assert asked.settings["recall_style"] == "question" and result.settings["recall_style"] == "repeat"
    # other recall rows (asked in other words), the same commonsense rows
    assert asked.needle_attention != result.needle_attention and asked.commonsense == result.commonsense


def stop_at_layer(monkeypatch, layer: int | None, swapped: list[int]):
    """Patch the sweep's swap to record each layer it swaps into `swapped` and raise KeyboardInterrupt (Ctrl-C) at
    `layer` (None: never)."""
    from hypenet.halo import select as select_module

    swap = select_module.swap_attention

    def swap_or_stop(teacher, layer_idx, *args, **kwargs):
        if layer_idx == layer:
            raise KeyboardInterrupt
        swapped.append(layer_idx)
        return swap(teacher, layer_idx, *args, **kwargs)

    monkeypatch.setattr(select_module, "swap_attention", swap_or_stop)


def without_seconds(result: SelectionResult) -> dict:
    values = result.to_dict()
    values["settings"].pop("seconds")
    return values


def test_a_sweep_stopped_part_way_resumes_to_the_uninterrupted_result(teacher, tokenizer, stage1_layers, heldout_docs,
                                                                     tmp_path, monkeypatch, caplog):
    """Ctrl-C at layer 3 of 8 keeps layers 0-2's scores in the partial file; run again with the same fingerprint, the
    sweep swaps only layers 3-7 and gives the uninterrupted sweep's result float for float (its needle attention and
    choice too); with another fingerprint it says what differs and scores every layer again."""
    settings = dict(heldout_docs=heldout_docs, recall_samples=2, recall_context=96, commonsense_tokens=150,
                    batch_size=2, progress=False, seed=4)
    expected = select_layers(teacher, tokenizer, stage1_layers, **settings)
    partial, fingerprint = tmp_path / "scored_layers.json", {"teacher": "tiny", "stage1": "a"}
    swapped = []
    with monkeypatch.context() as patch, caplog.at_level(logging.INFO, logger="hypenet.halo.select"):
        stop_at_layer(patch, 3, swapped)
        with pytest.raises(KeyboardInterrupt):
            select_layers(teacher, tokenizer, stage1_layers, partial=partial, fingerprint=fingerprint, **settings)
    assert swapped == [0, 1, 2]
    saved = json.loads(partial.read_text())
    assert list(saved["recall"]) == ["0", "1", "2"] and saved["fingerprint"]["stage1"] == "a"
    assert (f"layer selection: interrupted at layer 3 of {LAYERS}; the scores of layers 0-2 are kept in {partial}; "
            "--resume goes on from layer 3") in caplog.messages

    caplog.clear()
    swapped.clear()
    with monkeypatch.context() as patch, caplog.at_level(logging.INFO, logger="hypenet.halo.select"):
        stop_at_layer(patch, None, swapped)
        resumed = select_layers(teacher, tokenizer, stage1_layers, partial=partial, fingerprint=fingerprint,
                                **settings)
    assert swapped == list(range(3, LAYERS))  # the layers scored before are not scored again
    assert f"layer selection: resuming at layer 3 of {LAYERS} (3 scored before the stop)" in caplog.messages
    assert without_seconds(resumed) == without_seconds(expected)
    assert resumed.settings["seconds"] >= saved["seconds"]  # the sweeps' time, the stopped one's included

    for other, differs in (({"teacher": "tiny", "stage1": "b"}, "stage1"),
                           ({"teacher": "tiny", "stage1": "a", "data": 1}, "data")):
        partial.unlink()  # (the pipeline removes it once the choice is recorded)
        with monkeypatch.context() as patch:
            stop_at_layer(patch, 3, [])
            with pytest.raises(KeyboardInterrupt):  # layers 0-2 saved with `fingerprint` again
                select_layers(teacher, tokenizer, stage1_layers, partial=partial, fingerprint=fingerprint, **settings)
        caplog.clear()
        swapped.clear()
        with monkeypatch.context() as patch, caplog.at_level(logging.INFO, logger="hypenet.halo.select"):
            stop_at_layer(patch, None, swapped)
            again = select_layers(teacher, tokenizer, stage1_layers, partial=partial, fingerprint=other, **settings)
        assert swapped == list(range(LAYERS))
        assert (f"layer selection: starting again at layer 0: the 3 layers scored before ({partial}) were scored "
                f"with another {differs}") in caplog.messages
        assert without_seconds(again) == without_seconds(expected)
    # other probe settings are another fingerprint too
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hypenet.halo.select"):
        select_layers(teacher, tokenizer, stage1_layers, partial=partial, fingerprint=other,
                      **{**settings, "seed": 5})
    assert any(m.endswith("were scored with another probes.seed") for m in caplog.messages)
    # and so is another batch size: it can change the last bits of the scores on a GPU
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hypenet.halo.select"):
        select_layers(teacher, tokenizer, stage1_layers, partial=partial, fingerprint=other,
                      **{**settings, "seed": 5, "batch_size": 3})
    assert any(m.endswith("were scored with another batch_size") for m in caplog.messages)


def test_the_lm_eval_sweep_resumes_too(teacher, tokenizer, stage1_layers, tmp_path, monkeypatch, caplog):
    """The lm-eval route keeps its scores as the built-in probes' do: stopped at layer 5, run again, it evaluates
    layers 5-7 alone and records what an uninterrupted sweep records."""
    from hypenet.halo import select as select_module

    class FakeProbe:  # scores that depend on which layer is swapped: the swapped attention's output on fixed input
        def __init__(self, teacher, tokenizer, tasks, limit, include_path=None):
            self.teacher = teacher

        def __call__(self):
            with torch.no_grad():
                out = self.teacher(input_ids=torch.arange(12)[None], use_cache=False).logits
            return float(out.abs().mean()), float(out.std())

    monkeypatch.setattr(select_module, "LmEvalProbe", FakeProbe)
    settings = dict(lm_eval_tasks={"recall": ["swde"], "commonsense": ["piqa"]}, progress=False)
    expected = select_layers(teacher, tokenizer, stage1_layers, **settings)
    partial, swapped = tmp_path / "scored_layers.json", []
    with monkeypatch.context() as patch:
        stop_at_layer(patch, 5, swapped)
        with pytest.raises(KeyboardInterrupt):
            select_layers(teacher, tokenizer, stage1_layers, partial=partial, **settings)
    swapped.clear()
    with monkeypatch.context() as patch, caplog.at_level(logging.INFO, logger="hypenet.halo.select"):
        stop_at_layer(patch, None, swapped)
        resumed = select_layers(teacher, tokenizer, stage1_layers, partial=partial, **settings)
    assert swapped == [5, 6, 7]
    assert f"layer selection: resuming at layer 5 of {LAYERS} (5 scored before the stop)" in caplog.messages
    assert without_seconds(resumed) == without_seconds(expected)


def test_the_estimate_counts_the_flops_the_selection_runs(teacher, tokenizer, stage1_layers, heldout_docs):
    """`plan.selection_flops`, by which the conversion's estimate infers the layer selection's time: the model FLOPs
    of the Linear layers (matrix products) that the whole selection runs, sweep and needle attention, as torch's
    FLOP counter counts them (the attention scores and the lightning recurrence, left out of model FLOPs, are the
    batched products it counts apart)."""
    from torch.utils.flop_counter import FlopCounterMode

    from hypenet.halo.config import load_config
    from hypenet.halo.plan import selection_flops, selection_tokens

    sizes = {"recall_samples": 3, "recall_context": 128, "commonsense_tokens": 200}
    config = load_config(overrides=[f"select.{key}={value}" for key, value in sizes.items()])
    with FlopCounterMode(display=False) as counter:
        select_layers(teacher, tokenizer, stage1_layers, heldout_docs=heldout_docs, progress=False, **sizes)
    counted = counter.get_flop_counts()["Global"]
    assert selection_flops(teacher, stage1_layers, config) == counted[torch.ops.aten.mm]
    assert selection_tokens(config, LAYERS) == (LAYERS + 1) * (3 + 2) * 128  # 200 tokens of text: 2 rows of 128
    for other in (["select.strategy=even"], ["select.lm_eval_recall=[swde]", "select.lm_eval_commonsense=[piqa]"]):
        assert selection_flops(teacher, stage1_layers, load_config(overrides=other)) is None


def test_needle_attention_is_the_teachers_attention_on_the_asked_needle(teacher, tokenizer, heldout_docs):
    probes = build_probes(tokenizer, heldout_docs, recall_samples=2, context=128, commonsense_tokens=64, seed=5)
    looks = needle_attention(teacher, probes)
    teacher.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            weights = [teacher(probes.input_ids[row:row + 1], output_attentions=True).attentions for row in (0, 1)]
    finally:
        teacher.set_attn_implementation("sdpa")
    for layer in range(LAYERS):
        expected = [float(weights[row][layer][0, :, position, start:end].sum(-1).max())
                    for row, position, start, end in probes.lookups.tolist()]
        assert looks[layer] == pytest.approx(sum(expected) / len(expected), abs=1e-5)
    teacher.set_attn_implementation("eager")
    try:
        assert needle_attention(teacher, probes) is None  # no SDPA call to see
    finally:
        teacher.set_attn_implementation("sdpa")


def write_word_task(folder, documents: int = 40, seed: int = 0):
    """A local lm-eval multiple-choice task in `folder` (offline: its documents beside it) in the words the tiny
    tokenizer knows, so that the teacher's choices, and so its accuracy, change with the layer swapped."""
    rng = np.random.default_rng(seed)
    words = [*TEXT_WORDS, *probes_module.KEY_WORDS]
    docs = [{"question": " ".join(rng.choice(words, size=12)), "choices": [str(d) for d in rng.choice(10, size=4,
             replace=False)], "answer": int(rng.integers(4))} for _ in range(documents)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "docs.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    (folder / "utils.py").write_text(
        "import json\nfrom pathlib import Path\n\nimport datasets\n\n\ndef load_docs(**kwargs):\n"
        "    lines = (Path(__file__).parent / 'docs.jsonl').read_text().splitlines()\n"
        "    return datasets.DatasetDict({'test': datasets.Dataset.from_list([json.loads(x) for x in lines])})\n")
    (folder / "word_mc.yaml").write_text(
        "task: hypenet_word_mc\ncustom_dataset: !function utils.load_docs\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: '{{question}} .'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n")
    return folder


def test_the_lm_eval_sweep_scores_what_hypenet_eval_scores_with_that_layer_swapped(teacher, tokenizer,
                                                                                    stage1_layers, tmp_path):
    """With real lm-eval tasks (a local one: select.lm_eval_include_path), each layer's recall and commonsense are
    the task's normalised accuracy that `hypenet eval --lm-eval` (run_lm_eval) gives the teacher with that layer's
    stage-1 RNN in place of its attention, at batch size 1; the baseline is the teacher's own."""
    pytest.importorskip("lm_eval", reason="lm-eval is optional: pip install 'hypenet[eval]'")
    from hypenet.eval.lm_eval_adapter import run_lm_eval

    tasks = write_word_task(tmp_path / "tasks")
    result = select_layers(teacher, tokenizer, stage1_layers, lm_eval_tasks={
        "recall": ["hypenet_word_mc"], "commonsense": ["hypenet_word_mc"]}, lm_eval_include_path=[tasks],
        progress=False)

    def score() -> float:
        return run_lm_eval(teacher, tokenizer, ["hypenet_word_mc"], include_path=tasks, batch_size=1)[
            "hypenet_word_mc"]["acc_norm"]

    assert result.baseline == {"recall": score(), "commonsense": score()}
    assert result.recall == result.commonsense
    assert len(set(result.recall.values()) | {result.baseline["recall"]}) > 2  # the swaps change the answers
    for i in (0, 3, LAYERS - 1):
        with swap_attention(teacher, i, stage1_layers[i]):
            assert result.recall[i] == score()
    assert result.settings["include_path"] == [str(tasks)]
    assert len(result.attention_layers) == LAYERS // 4


def test_an_unknown_lm_eval_task_names_the_selection_setting(teacher, tokenizer, stage1_layers):
    pytest.importorskip("lm_eval", reason="lm-eval is optional: pip install 'hypenet[eval]'")
    with pytest.raises(ValueError, match=r"lm-eval does not know task\(s\) \['no_such_task_xyz'\]; check the names "
                                         r"\(`lm-eval ls tasks`\) or pass the folder with their YAML files as "
                                         r"select.lm_eval_include_path\.$"):
        select_layers(teacher, tokenizer, stage1_layers, progress=False,
                      lm_eval_tasks={"recall": ["no_such_task_xyz"], "commonsense": ["arc_easy"]})


def test_lm_eval_missing_gives_install_hint(teacher, tokenizer, stage1_layers, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match="pip install lm-eval"):
        select_layers(teacher, tokenizer, stage1_layers, lm_eval_tasks={"recall": ["swde"], "commonsense": ["piqa"]})


# ---- logit-scaling base and export -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def student(teacher):
    torch.manual_seed(2)
    mixer_types = ["attention" if i in (1, 5) else "lightning" for i in range(LAYERS)]
    model = build_hypenet_from_teacher(teacher, mixer_types).eval()
    with torch.no_grad():  # attention layers with a sharper q, so that the query scaling visibly changes the loss
        for i in (1, 5):
            model.model.layers[i].self_attn.q_norm.weight.mul_(4.0)
    return model


def direct_long_context_loss(model, docs, a, scored_from, end=None):
    """The mean loss of the tokens at positions scored_from..end-1 (to each document's end by default)."""
    model.config.attention_logit_scaling_base = a
    nll, count = 0.0, 0
    for doc in docs:
        ids = torch.as_tensor(doc)[None]
        stop = ids.shape[1] if end is None else min(end, ids.shape[1])
        if stop <= scored_from:
            continue
        out = logits(model, ids)[0]
        nll += F.cross_entropy(out[scored_from - 1 : stop - 1], ids[0, scored_from:stop], reduction="sum").item()
        count += stop - scored_from
    model.config.attention_logit_scaling_base = None
    return nll / count


def test_choose_logit_scaling_base_picks_lowest_loss(student):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, student.config.vocab_size, size=n) for n in (120, 80, 30)]  # the 30-token one is too short
    candidates = (None, 2, 50, 1000)
    best, losses = choose_logit_scaling_base(student, docs, candidates, eval_len=100, train_context=40)
    direct = {a: direct_long_context_loss(student, [docs[0][:100], docs[1]], a, 40) for a in candidates}
    assert losses == pytest.approx(direct, rel=1e-5)
    assert best == min(direct, key=direct.get)
    assert len(set(round(v, 6) for v in losses.values())) > 1  # the candidates really differ
    assert student.config.attention_logit_scaling_base is None  # restored


@pytest.mark.parametrize("mixers", ["lightning", "attention"])
def test_the_estimate_counts_the_flops_the_export_search_runs(teacher, mixers, monkeypatch):
    """`export.search_lengths` and `plan.export_flops`, by which the conversion's estimate infers the export's time:
    the sequences the search runs through the model for each base (the documents it scores, then the copy probe's),
    and their FLOPs as torch's FLOP counter counts them: the Linear layers' products (aten.mm) exactly, and the
    attention scores at half what eager attention computes (aten.bmm: the whole square, where a causal kernel does
    the half below the diagonal). With lightning layers alone there are no scores to count (their recurrence, also
    aten.bmm, is left out as in training)."""
    from torch.utils.flop_counter import FlopCounterMode

    from hypenet.halo import export as export_module
    from hypenet.halo.export import search_lengths
    from hypenet.halo.plan import export_flops

    model = build_hypenet_from_teacher(teacher, [mixers] * LAYERS).eval()
    model.set_attn_implementation("eager")
    rng = np.random.default_rng(0)
    docs = [rng.integers(13, 60, size=n) for n in (150, 90, 200, 30)]  # 200 cut to 160; 30 too short to score
    settings = dict(eval_len=160, train_context=40, copies=2, copy_span=8)
    lengths, token_nlls = [], export_module.token_nlls

    def recorded(model, input_ids, **kwargs):  # the sequences the search runs through the model
        lengths.append(len(input_ids))
        return token_nlls(model, input_ids, **kwargs)

    monkeypatch.setattr(export_module, "token_nlls", recorded)
    with FlopCounterMode(display=False) as counter:
        choose_logit_scaling_base(model, docs, (100, 200), **settings)
    expected = search_lengths(docs, **settings)
    assert expected == [150, 90, 160] * 2 and lengths == expected * 2  # the documents, then their copy probes
    counted = counter.get_flop_counts()["Global"]
    scores = counted[torch.ops.aten.bmm] / 2 if mixers == "attention" else 0
    assert 2 * export_flops(model, expected) == counted[torch.ops.aten.mm] + scores
    assert search_lengths(docs, 40, 160) == [150, 90, 160]  # without the copy probe
    assert search_lengths(docs, 40, 160, copies=40) == [150, 90, 160]  # no room for it: skipped, as the search does
    assert search_lengths([np.arange(1)], 40) == []  # nothing to score: the search stops at once


def test_choose_logit_scaling_base_falls_back_to_longest(student):
    docs = [np.arange(10, 30), np.arange(5, 40)]
    with pytest.warns(UserWarning, match="longest one \\(35 tokens\\)"):
        best, losses = choose_logit_scaling_base(student, docs, (None, 100), train_context=64)
    assert set(losses) == {None, 100} and best in losses
    with pytest.raises(ValueError, match="None \\(off\\) or numbers > 1"):
        choose_logit_scaling_base(student, docs, (None, 1), train_context=64)


def _fake_loss(monkeypatch, loss_of_base):
    """Make the long-context loss a function of the logit-scaling base the model is set to."""
    from hypenet.halo import export as export_module

    def loss(model, docs, scored_from, device, by_band=None):
        return loss_of_base(model.config.attention_logit_scaling_base)

    monkeypatch.setattr(export_module, "long_context_loss", loss)


def test_logit_scaling_search_goes_past_the_grid_edge(student, monkeypatch):
    import warnings

    from hypenet.halo.export import GridEdgeWarning

    docs = [np.arange(2, 122)]
    _fake_loss(monkeypatch, lambda a: 1 / a)  # falls without end: each extension doubles the last base
    with pytest.warns(GridEdgeWarning, match="still falling at logit-scaling base 1600, the largest tried"):
        best, losses = choose_logit_scaling_base(student, docs, (100, 200), train_context=40, extend=3)
    assert best == 1600 and list(losses) == [100, 200, 400, 800, 1600]
    _fake_loss(monkeypatch, lambda a: a)  # rises: halve the smallest while the base stays > 1
    best, losses = choose_logit_scaling_base(student, docs, (8, 16), train_context=40, extend=5)
    assert best == 2 and list(losses) == [8, 16, 4, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error", GridEdgeWarning)  # a minimum inside the grid, or off: nothing to extend
        _fake_loss(monkeypatch, lambda a: (np.log(a) - np.log(450)) ** 2)
        best, losses = choose_logit_scaling_base(student, docs, (100, 200, 500, 1000), train_context=40, extend=4)
        assert best == 500 and list(losses) == [100, 200, 500, 1000]
        _fake_loss(monkeypatch, lambda a: 0.0 if a is None else 1 / a)
        best, losses = choose_logit_scaling_base(student, docs, (None, 100, 200), train_context=40, extend=4)
        assert best is None and list(losses) == [None, 100, 200]
    assert student.config.attention_logit_scaling_base is None  # restored
    with pytest.raises(ValueError, match="extend must be >= 0"):
        choose_logit_scaling_base(student, docs, (100, 200), train_context=40, extend=-1)


def test_the_search_logs_each_base_with_its_place_and_the_time_the_others_take(student, monkeypatch, caplog):
    """The export's search logged each base's loss with no word of how many were left: the conversion's estimate
    leaves the export out, so a user saw minutes of loss lines with no end in sight. Each line now says which base of
    the grid it is, what it took, and the time the rest of the grid takes at the mean so far; past the grid (which the
    losses decide), how many more of at most `extend`."""
    from hypenet.halo import export as export_module
    from hypenet.halo.export import GridEdgeWarning, base_progress

    clock = iter(range(0, 1000, 5))  # every base takes 5 s: perf_counter before and after each
    monkeypatch.setattr(export_module.time, "perf_counter", lambda: float(next(clock)))
    _fake_loss(monkeypatch, lambda a: 1 / a)
    with caplog.at_level(logging.INFO, logger="hypenet.halo.export"), pytest.warns(GridEdgeWarning):
        choose_logit_scaling_base(student, [np.arange(2, 122)], (100, 200, 200, 300), train_context=40, extend=2)
    said = [m.split(": long-context loss")[0] for m in caplog.messages if m.startswith("logit-scaling base")]
    assert said == [
        "logit-scaling base 100 (1 of 3, 5 s; about 10 s for the other 2; up to 2 more if the lowest loss is at the "
        "grid's edge)",
        "logit-scaling base 200 (2 of 3, 5 s; about 5 s for the other 1; up to 2 more if the lowest loss is at the "
        "grid's edge)",
        "logit-scaling base 300 (3 of 3, 5 s; up to 2 more if the lowest loss is at the grid's edge)",
        "logit-scaling base 600 (1 more of at most 2, 5 s)",
        "logit-scaling base 1200 (2 more of at most 2, 5 s)",
    ]
    assert base_progress(1, 9, 0, [30.0]) == "1 of 9, 30 s; about 4 min for the other 8"
    assert base_progress(2, 2, 0, [0.2, 0.2]) == "2 of 2, <1 s"


def test_export_reports_the_extended_search(student, tokenizer, tmp_path, monkeypatch):
    _fake_loss(monkeypatch, lambda a: 9.0 if a is None else 1 / a)
    info = export_checkpoint(student, tokenizer, tmp_path / "ckpt", [np.arange(2, 122)], candidates=(200, None, 100),
                             train_context=40, extend=1)
    assert info["logit_scaling_base"] == 400 and list(info["losses"]) == ["off", "100", "200", "400"]
    assert len(info["warnings"]) == 1 and "still falling at logit-scaling base 400" in info["warnings"][0]
    student.config.attention_logit_scaling_base = None


def test_most_scaling_within_a_tolerance_picks_the_smallest_near_base():
    # the fortieth lease's export losses (results/gpu_convert/README.md): 8000 is 0.03% above 16000's lowest
    losses = {None: 3.2, 4000: 2.8971, 8000: 2.8785, 16000: 2.8776, 32000: 2.8935}
    assert most_scaling_within(losses, 0.001) == 8000
    assert most_scaling_within(losses, 0.0001) == 16000  # only the lowest within 0.01%
    assert most_scaling_within(losses, 0.01) == 4000
    assert most_scaling_within({None: 1.0, 500: 1.5}, 0.1) is None  # off alone is near the lowest
    assert most_scaling_within({None: 1.0, 500: 1.05}, 0.1) == 500  # any number scales more than off
    with pytest.raises(ValueError, match="no base was scored"):
        most_scaling_within({}, 0.001)


def test_a_tolerance_changes_the_choice_not_the_search(student, monkeypatch):
    docs = [np.arange(2, 122)]
    loss_of = {100: 1.10, 200: 1.0005, 400: 1.0, 800: 1.02}
    _fake_loss(monkeypatch, loss_of.get)
    best, losses = choose_logit_scaling_base(student, docs, (100, 200, 400, 800), train_context=40, extend=2)
    near_best, near_losses = choose_logit_scaling_base(student, docs, (100, 200, 400, 800), train_context=40,
                                                       extend=2, tolerance=0.001)
    assert (best, near_best) == (400, 200) and losses == near_losses == loss_of
    with pytest.raises(ValueError, match="tolerance must be in \\[0, 1\\)"):
        choose_logit_scaling_base(student, docs, (100, 200), train_context=40, tolerance=-0.1)


def test_export_with_a_tolerance_reports_the_lowest_loss_base(student, tokenizer, tmp_path, monkeypatch):
    _fake_loss(monkeypatch, {None: 2.0, 100: 1.0009, 200: 1.0, 400: 1.01}.get)
    candidates = (None, 100, 200, 400)
    info = export_checkpoint(student, tokenizer, tmp_path / "ckpt", [np.arange(2, 122)], candidates=candidates,
                             train_context=40, tolerance=0.001)
    assert info["logit_scaling_base"] == 100 and info["tolerance"] == 0.001 and info["lowest_loss_base"] == 200
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["attention_logit_scaling_base"] == 100
    student.config.attention_logit_scaling_base = None
    write_report(tmp_path / "report", {"export": info})
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert ("logit-scaling base a = 100: the smallest base whose loss is within 0.1% of the lowest "
            "(`export.logit_scaling_tolerance`; the lowest-loss base: 200).") in markdown
    plain = export_checkpoint(student, tokenizer, tmp_path / "plain", [np.arange(2, 122)], candidates=candidates,
                              train_context=40)
    assert plain["logit_scaling_base"] == 200 and "tolerance" not in plain and "lowest_loss_base" not in plain
    student.config.attention_logit_scaling_base = None


def test_export_loads_without_hypenet_and_generates_the_same(student, tokenizer, tmp_path):
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, student.config.vocab_size, size=90) for _ in range(2)]
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "stale.txt").write_text("replaced by the export")
    info = export_checkpoint(
        student, tokenizer, out, docs, candidates=(None, 50, 500), train_context=32, eval_len=80,
        extra_info={"teacher": "tiny-qwen3"},
    )
    assert info["path"] == str(out) and list(info["losses"]) == ["off", "50", "500"]
    # other libraries' warnings during the search are not the export's; a best base at the grid's edge is
    at_edge = min(info["losses"], key=info["losses"].get) != "off"  # 50 or 500: the edges of two numbers
    assert len(info["warnings"]) == at_edge and all("still falling" in note for note in info["warnings"])
    config = json.loads((out / "config.json").read_text())
    saved_base = config["attention_logit_scaling_base"]
    assert saved_base == info["logit_scaling_base"] == student.config.attention_logit_scaling_base
    assert config["auto_map"] == {
        "AutoConfig": "configuration_hypenet.HypeNetConfig",
        "AutoModel": "modeling_hypenet.HypeNetModel",
        "AutoModelForCausalLM": "modeling_hypenet.HypeNetForCausalLM",
    }
    files = {"model.safetensors", "modeling_hypenet.py", "configuration_hypenet.py", "lightning.py", "tokenizer.json"}
    assert files <= {p.name for p in out.iterdir()}
    assert not (out / "stale.txt").exists() and not list(tmp_path.glob(".ckpt.*"))
    assert json.loads((out / "halo_export.json").read_text())["teacher"] == "tiny-qwen3"

    prompt = [[2, 15, 16, 17, 30, 31]]
    with torch.no_grad():
        expected = student.generate(torch.tensor(prompt), max_new_tokens=8, do_sample=False).tolist()
    code = f"""
import json
import logging
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    print(json.dumps(model.generate(torch.tensor({prompt}), max_new_tokens=8, do_sample=False).tolist()))
"""
    run = run_without_hypenet(code, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == expected


def test_export_records_only_its_own_warnings(student, tokenizer, tmp_path, monkeypatch):
    import warnings

    import hypenet.halo.export as export

    scored = export.long_context_loss

    def noisy(*args, **kwargs):  # as torch and transformers warn during a forward on a GPU
        warnings.warn("Flash Attention is not installed", UserWarning)
        return scored(*args, **kwargs)

    monkeypatch.setattr(export, "long_context_loss", noisy)
    short = [np.arange(5, 40)]  # shorter than the training context: the export's own warning
    info = export_checkpoint(student, tokenizer, tmp_path / "w", short, candidates=(None, 50), train_context=64)
    assert "longest one (35 tokens)" in info["warnings"][0] and "data.heldout_fraction" in info["warnings"][0]
    assert not any("Flash Attention" in note for note in info["warnings"])  # (the tiny random student's losses at
    # off and 50 may also be a near tie: the export's own second warning)


def test_export_with_explicit_base_skips_the_search(student, tokenizer, tmp_path):
    info = export_checkpoint(student, tokenizer, tmp_path / "fixed", logit_scaling_base=700)
    assert info["logit_scaling_base"] == 700 and info["losses"] == {} and info["losses_by_band"] == {}
    assert json.loads((tmp_path / "fixed" / "config.json").read_text())["attention_logit_scaling_base"] == 700


def test_export_of_a_teacher_without_an_end_token_stops_at_the_tokenizers_eos(student, tokenizer, tmp_path, caplog):
    """A teacher config without eos_token_id: the export's config and generation config take the tokenizer's EOS, so
    that generate() stops there; a model that names its own end token keeps it."""
    model = copy.deepcopy(student)
    model.config.eos_token_id = None
    model.generation_config.eos_token_id = None
    with caplog.at_level(logging.WARNING, logger="hypenet.halo.export"):
        export_checkpoint(model, tokenizer, tmp_path / "eos", logit_scaling_base=700)
    assert "names no end token" in caplog.text
    eos = tokenizer.eos_token_id
    assert json.loads((tmp_path / "eos" / "config.json").read_text())["eos_token_id"] == eos
    assert json.loads((tmp_path / "eos" / "generation_config.json").read_text())["eos_token_id"] == eos
    caplog.clear()
    own = copy.deepcopy(student)
    own.config.eos_token_id = own.generation_config.eos_token_id = 3
    export_checkpoint(own, tokenizer, tmp_path / "own", logit_scaling_base=700)
    assert json.loads((tmp_path / "own" / "config.json").read_text())["eos_token_id"] == 3 != eos
    assert "names no end token" not in caplog.text


def test_export_of_a_tokenizer_without_a_pad_token_pads_with_eos(student, tokenizer, tmp_path):
    """Llama's and Mistral's tokenizers have no pad token: the export's pads with EOS, so that a batch of prompts of
    different lengths can be padded; the tokenizer given is left as it was."""
    from transformers import AutoTokenizer

    unpadded = copy.deepcopy(tokenizer)
    unpadded.pad_token = None
    export_checkpoint(student, unpadded, tmp_path / "pad", logit_scaling_base=700)
    exported = AutoTokenizer.from_pretrained(tmp_path / "pad", padding_side="left")
    assert exported.pad_token == exported.eos_token == "<eos>" and unpadded.pad_token is None
    batch = exported(["a b c", "a"], padding=True)["input_ids"]
    assert len(batch[0]) == len(batch[1]) and batch[1][0] == exported.eos_token_id


def test_export_of_an_all_rnn_model_searches_no_base(teacher, tokenizer, tmp_path):
    model = build_hypenet_from_teacher(teacher, ["lightning"] * LAYERS).eval()
    docs = [np.arange(5, 95)]
    info = export_checkpoint(model, tokenizer, tmp_path / "rnn", docs, train_context=32, eval_len=80)
    assert info["logit_scaling_base"] is None and info["losses"] == {} and info["losses_by_band"] == {}
    assert "no attention layer" in info["warnings"][0]
    config = json.loads((tmp_path / "rnn" / "config.json").read_text())
    assert config["attention_logit_scaling_base"] is None and "attention" not in config["mixer_types"]


# ---- the long-context loss per position band (a diagnostic) ----------------------------------------------------


def test_position_bands_and_labels():
    assert position_bands(16384, 65536) == [(16384, 32768), (32768, 65536)]
    assert [band_label(*b) for b in position_bands(16384, 65536)] == ["16K-32K", "32K-64K"]
    assert position_bands(16384, 40000) == [(16384, 32768), (32768, 40000)]  # clipped at the longest document
    assert [band_label(*b) for b in position_bands(16384, 40000)] == ["16K-32K", "32K-40000"]
    assert position_bands(40, 100) == [(40, 80), (80, 100)] and band_label(40, 80) == "40-80"
    assert position_bands(40, 80) == [(40, 80)]  # no band that no document reaches
    assert position_bands(40, 81) == [(40, 80), (80, 81)]
    assert band_label(512, 1000) == "512-1000" and band_label(512, 1024) == "512-1K"
    assert position_bands(1, 5) == [(1, 2), (2, 4), (4, 5)]
    for scored_from, longest in ((0, 10), (10, 10), (11, 10)):
        with pytest.raises(ValueError, match="1 <= scored_from < the longest"):
            position_bands(scored_from, longest)


def test_band_losses_split_the_overall_loss(student):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, student.config.vocab_size, size=n) for n in (120, 80, 30)]  # 120 is cut to 100
    scored = [docs[0][:100], docs[1]]
    candidates = (None, 2, 50, 1000)
    by_band = {}
    best, losses = choose_logit_scaling_base(student, docs, candidates, eval_len=100, train_context=40,
                                             band_losses=by_band)
    assert list(by_band) == list(losses) == list(candidates)
    tokens = {"40-80": 40 + 40, "80-100": 20}  # positions 40..79 of both documents, 80..99 of the longer one
    for a in candidates:
        assert list(by_band[a]) == list(tokens)
        weighted = sum(tokens[band] * loss for band, loss in by_band[a].items()) / sum(tokens.values())
        assert weighted == pytest.approx(losses[a], rel=1e-6, abs=0)
        direct = {band_label(start, end): direct_long_context_loss(student, scored, a, start, end)
                  for start, end in ((40, 80), (80, 100))}
        assert by_band[a] == pytest.approx(direct, rel=1e-5)
    assert len({round(by_band[a]["80-100"], 6) for a in candidates}) > 1  # the bands really differ between bases
    assert student.config.attention_logit_scaling_base is None


def test_band_losses_leave_the_choice_unchanged(student):
    """The same losses, bit for bit, as before the bands (the overall mean of token_nlls past scored_from)."""
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, student.config.vocab_size, size=n) for n in (130, 70, 101)]
    candidates = (None, 2, 50, 1000)
    before = {}
    for a in candidates:  # the loss as the export computed it before the bands existed
        student.config.attention_logit_scaling_base = a
        nlls = [token_nlls(student, torch.as_tensor(d[:120]), logits_chunk=1024)[40 - 1:] for d in docs]
        before[a] = sum(float(n.sum()) for n in nlls) / sum(n.numel() for n in nlls)
    student.config.attention_logit_scaling_base = None
    plain = choose_logit_scaling_base(student, docs, candidates, eval_len=120, train_context=40)
    by_band = {}
    banded = choose_logit_scaling_base(student, docs, candidates, eval_len=120, train_context=40, band_losses=by_band)
    assert plain == banded and plain[1] == before and plain[0] == min(before, key=before.get)
    assert list(by_band[None]) == ["40-80", "80-120"]


def test_export_reports_losses_by_band(student, tokenizer, tmp_path):
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, student.config.vocab_size, size=n) for n in (90, 70)]
    info = export_checkpoint(student, tokenizer, tmp_path / "ckpt", docs, candidates=(500, None, 50),
                             train_context=32, eval_len=80)
    by_band = info["losses_by_band"]
    assert list(info["losses"]) == ["off", "50", "500"]
    assert list(by_band) == ["32-64", "64-80"] and all(list(row) == list(info["losses"]) for row in by_band.values())
    tokens = {"32-64": 32 + 32, "64-80": 16 + 6}
    for base, loss in info["losses"].items():
        weighted = sum(tokens[band] * by_band[band][base] for band in by_band) / sum(tokens.values())
        assert weighted == pytest.approx(loss, rel=1e-6, abs=0)
    assert json.loads((tmp_path / "ckpt" / "halo_export.json").read_text())["losses_by_band"] == by_band
    student.config.attention_logit_scaling_base = None

    _, md_path = write_report(tmp_path / "report", {"export": info})
    md = md_path.read_text()
    assert "| a | long-context loss | 32-64 | 64-80 |" in md and "chosen on the overall long-context loss" in md
    rows = [line.split(" | ") for line in md.splitlines() if line.startswith(("| off ", "| 50 ", "| 500 "))]
    assert len(rows) == 3 and all(sum("**" in cell for cell in column) >= 1 for column in list(zip(*rows))[1:])
    chosen = scaling_label(info["logit_scaling_base"])
    assert [row[0] for row in rows if row[1].startswith("**")] == [f"| {chosen}"]


# ---- the copy probe ---------------------------------------------------------------------------------------------


def test_far_copies_stand_further_back_than_the_training_context():
    doc = np.arange(1000, 1400)  # distinct tokens: a copy's original can be found by its values
    ids, starts = far_copies(doc, 64, 5, 16, np.random.default_rng(0))
    assert len(ids) == len(doc) and ids.dtype == np.int64 and len(starts) == 5
    width = (400 - 64) // 5
    copied = np.zeros(len(doc), dtype=bool)
    for j, start in enumerate(starts):
        assert 64 + j * width <= start <= 64 + (j + 1) * width - 16  # the j-th copy within the j-th slot
        copied[start:start + 16] = True
        sources = [p for p in range(start - 64 + 1) if np.array_equal(ids[p:p + 16], ids[start:start + 16])]
        assert sources, f"copy {j} has no original at least 64 tokens before it"
    assert np.array_equal(ids[~copied], doc[~copied]) and not np.array_equal(ids, doc)
    again, again_starts = far_copies(doc, 64, 5, 16, np.random.default_rng(0))
    assert np.array_equal(again, ids) and again_starts == starts  # drawn from the generator alone
    assert np.array_equal(doc, np.arange(1000, 1400))  # the document itself is left as it was
    for copies, span, scored_from, n in ((0, 16, 64, 400), (5, 1, 64, 400), (5, 65, 64, 400), (5, 16, 64, 143)):
        with pytest.raises(ValueError, match="far copies need copies >= 1, 2 <= span <= scored_from"):
            far_copies(np.arange(n), scored_from, copies, span, np.random.default_rng(0))
    far_copies(np.arange(144), 64, 5, 16, np.random.default_rng(0))  # (144 - 64) // 5 == 16: just room


def test_far_copy_docs_skip_documents_without_room():
    docs = [np.arange(200), np.arange(70), np.arange(300)]
    probes = far_copy_docs(docs, 40, 4, 8)
    assert [len(ids) for ids, _ in probes] == [200, 300]  # the 30 tokens past 40 make 4 slots of 7, too few for 8
    with pytest.raises(ValueError, match="needs a held-out document of at least 104 tokens .* the longest has 90"):
        far_copy_docs([np.arange(90)], 40, 4, 16)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(probes, far_copy_docs(docs, 40, 4, 8)))


def test_far_copy_loss_scores_each_copy_from_its_second_token(student):
    rng = np.random.default_rng(4)
    docs = [rng.integers(0, student.config.vocab_size, size=n) for n in (120, 96)]
    probes = far_copy_docs(docs, 40, 3, 6)
    student.config.attention_logit_scaling_base = 100
    try:
        loss = far_copy_loss(student, probes, 6)
        nll, count = 0.0, 0
        for ids, starts in probes:
            ids = torch.as_tensor(ids)[None]
            out = logits(student, ids)[0]
            for start in starts:  # tokens start + 1 .. start + 5, predicted from the positions before them
                nll += F.cross_entropy(out[start:start + 5], ids[0, start + 1:start + 6], reduction="sum").item()
                count += 5
    finally:
        student.config.attention_logit_scaling_base = None
    assert count == 2 * 3 * 5 and loss == pytest.approx(nll / count, rel=1e-5)


def test_best_copy_within_picks_the_near_base_that_copies_best():
    losses = {None: 3.2, 4000: 2.8971, 8000: 2.8785, 16000: 2.8776, 32000: 2.8935}
    copied = {None: 5.0, 4000: 0.5, 8000: 1.2, 16000: 1.4, 32000: 2.0}
    assert best_copy_within(losses, copied, 0.001) == 8000  # 4000 copies best but is 0.7% above the lowest loss
    assert best_copy_within(losses, copied, 0.01) == 4000
    assert best_copy_within(losses, {**copied, 8000: 1.6}, 0.001) == 16000
    assert best_copy_within(losses, {**copied, 16000: 1.2}, 0.001) == 8000  # a tie goes to the most scaling
    assert best_copy_within({None: 1.0, 500: 1.05}, {None: 2.0, 500: 2.0}, 0.1) == 500
    with pytest.raises(ValueError, match="no far-copy loss for base\\(s\\) 16000"):
        best_copy_within(losses, {8000: 1.0}, 0.001)


def _fake_copy_loss(monkeypatch, loss_of_base):
    from hypenet.halo import export as export_module

    monkeypatch.setattr(export_module, "far_copy_loss",
                        lambda model, probes, span, device: loss_of_base(model.config.attention_logit_scaling_base))


def test_the_copy_probe_chooses_only_with_a_tolerance(student, monkeypatch):
    docs = [np.arange(2, 122)]
    loss_of = {100: 1.10, 200: 1.02, 400: 1.0008, 800: 1.0, 1600: 1.0005}
    copy_of = {100: 0.1, 200: 0.9, 400: 0.8, 800: 0.9, 1600: 0.5}
    _fake_loss(monkeypatch, loss_of.get)
    _fake_copy_loss(monkeypatch, copy_of.get)
    choices = {}
    for tolerance in (0.0, 0.001):
        copied = {}
        choices[tolerance], losses = choose_logit_scaling_base(student, docs, (100, 200, 400), train_context=40,
                                                               extend=2, tolerance=tolerance, copies=2,
                                                               copy_span=8, copy_losses=copied)
        assert losses == loss_of and copied == copy_of  # the bases the search went on to (800, 1600) too
    assert choices == {0.0: 800, 0.001: 1600}  # the lowest loss; the best copier among 400, 800 and 1600
    plain, _ = choose_logit_scaling_base(student, docs, (100, 200, 400), train_context=40, extend=2, tolerance=0.001)
    assert plain == 400  # without the probe: the smallest near base
    with pytest.raises(ValueError, match="copies must be >= 0"):
        choose_logit_scaling_base(student, docs, (100, 200), train_context=40, copies=-1)


def test_a_copy_probe_without_room_is_skipped_with_a_warning(student, tokenizer, tmp_path, monkeypatch):
    """Documents too short for the copies (here 80 tokens past position 40 for 4 x 32) lose the probe, not the
    export: a warning in the report, and with a tolerance the choice made as without the probe."""
    from hypenet.halo.export import CopyProbeWarning

    _fake_loss(monkeypatch, {100: 1.0005, 200: 1.0, 400: 1.1}.get)
    with pytest.warns(CopyProbeWarning, match="needs a held-out document of at least 168 tokens.*probe was skipped; "
                                              "the base is chosen as without it"):
        copied = {}
        best, _ = choose_logit_scaling_base(student, [np.arange(2, 122)], (100, 200, 400), train_context=40,
                                            tolerance=0.001, copies=4, copy_losses=copied)
    assert best == 100 and copied == {}
    info = export_checkpoint(student, tokenizer, tmp_path / "ckpt", [np.arange(2, 122)], candidates=(100, 200, 400),
                             train_context=40, copies=4)
    student.config.attention_logit_scaling_base = None
    assert info["logit_scaling_base"] == 200 and "copy_losses" not in info and "copy_probe" not in info
    assert len(info["warnings"]) == 2 and "The copy probe was skipped" in info["warnings"][0]
    assert "cannot tell logit-scaling base 100 from the lowest-loss base 200" in info["warnings"][1]  # 0.05% apart


def test_export_reports_the_copy_probe(student, tokenizer, tmp_path):
    rng = np.random.default_rng(5)
    docs = [rng.integers(0, student.config.vocab_size, size=n) for n in (130, 110)]
    kwargs = dict(candidates=(500, None, 50), train_context=32, eval_len=128)
    plain = export_checkpoint(student, tokenizer, tmp_path / "plain", docs, **kwargs)
    probed = export_checkpoint(student, tokenizer, tmp_path / "probed", docs, copies=3, copy_span=8, **kwargs)
    student.config.attention_logit_scaling_base = None
    assert probed["losses"] == plain["losses"] and probed["losses_by_band"] == plain["losses_by_band"]
    assert probed["logit_scaling_base"] == plain["logit_scaling_base"]  # no tolerance: the probe only reports
    assert "copy_losses" not in plain and "copy_probe" not in plain
    assert probed["copy_probe"] == {"copies": 3, "span": 8} and list(probed["copy_losses"]) == ["off", "50", "500"]
    probes = far_copy_docs([d[:128] for d in docs], 32, 3, 8)
    for label, base in (("off", None), ("50", 50), ("500", 500)):
        student.config.attention_logit_scaling_base = base
        assert probed["copy_losses"][label] == pytest.approx(far_copy_loss(student, probes, 8), rel=1e-6)
    student.config.attention_logit_scaling_base = None
    assert len(set(probed["copy_losses"].values())) == 3
    saved = json.loads((tmp_path / "probed" / "halo_export.json").read_text())
    assert saved["copy_losses"] == probed["copy_losses"] and saved["copy_probe"] == probed["copy_probe"]
    md = write_report(tmp_path / "report", {"export": probed})[1].read_text()
    assert "Copy probe: 3 spans of 8 tokens per document" in md
    assert "| a | long-context loss | far-copy loss | 32-64 | 64-128 |" in md
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in md.splitlines()
            if line.startswith(("| off ", "| 50 ", "| 500 "))}
    best_copier = min(probed["copy_losses"], key=probed["copy_losses"].get)
    assert [label for label, row in rows.items() if row[2].startswith("**")] == [best_copier]
    plain_md = write_report(tmp_path / "plain_report", {"export": plain})[1].read_text()
    assert "far-copy" not in plain_md and "Copy probe" not in plain_md


def test_report_names_the_copy_rule(tmp_path):
    export = {"path": "/x", "logit_scaling_base": 8000, "warnings": [], "tolerance": 0.001, "lowest_loss_base": 16000,
              "losses": {"8000": 2.8785, "16000": 2.8776}, "losses_by_band": {"16K-32K": {"8000": 2.8, "16000": 2.8}},
              "copy_losses": {"8000": 1.2, "16000": 1.4}, "copy_probe": {"copies": 16, "span": 32}}
    md = write_report(tmp_path, {"export": export})[1].read_text()
    assert ("logit-scaling base a = 8000: the base with the lowest far-copy loss among those whose loss is within "
            "0.1% of the lowest (`export.logit_scaling_tolerance`; the lowest-loss base: 16000).") in md
    assert "| 8000 | 2.8785 | **1.2** | **2.8** |" in md and "| 16000 | **2.8776** | 1.4 | **2.8** |" in md


# ---- report ---------------------------------------------------------------------------------------------------


def test_write_report(tmp_path):
    selection = SelectionResult(
        [2, 5], "halo", 8, scores={i: float(i % 3) for i in range(8)}, recall={i: 0.5 for i in range(8)},
        commonsense={i: 0.9 for i in range(8)}, baseline={"recall": 0.9, "commonsense": 1.0},
        needle_attention={i: 0.1 * i for i in range(8)},
    )
    report = {
        "teacher": "tiny",
        "stages": {
            "stage1": {"tokens": 1000, "steps": 3, "wall_time_s": 1.5, "losses": [[1, 2.0], [2, 1.5], [3, 1.0]],
                       "processes": 1, "distributed": "NO", "runs": 2},
            "stage2": {"tokens": 2000, "steps": 2, "wall_time_s": 2.5, "losses": [[1, 4.0], [2, 3.0]],
                       "processes": 2, "distributed": "DEEPSPEED", "zero_stage": 2},
        },
        "selection": json.loads(json.dumps(selection.to_dict())),  # str keys, as read back from JSON
        "export": {"path": "/x", "logit_scaling_base": 500, "losses": {"off": 3.2, "500": 3.1}, "warnings": []},
        "heldout": {"student_loss": 3.1},
    }
    json_path, md_path = write_report(tmp_path, report)
    assert json.loads(json_path.read_text()) == report
    md = md_path.read_text()
    # stage 1 run twice (stopped and resumed) on one process; stage 2's runs not recorded (a report from before them)
    assert "| stage1 | 1000 | 3 | 1.5 | 2 | 2 | 1 | 1 |" in md and "| 2.5 | - | 4 | 3 | 2 (DEEPSPEED, ZeRO-2) |" in md
    assert "| 2 | yes | 0.5 | 0.9 | 2 | 0.2 |" in md and "| 1 |  | 0.5 | 0.9 | 1 | 0.1 |" in md
    assert "needles most in layers [6, 7]" in md and "of these, [6, 7] become recurrent layers" in md
    assert "a = 500" in md and "| off | 3.2 |" in md and "student_loss" in md
    assert (tmp_path / "report.png").stat().st_size > 0 and "report.png" in md


EXPORT_TABLE = ["## Export", "", "Checkpoint `/x`; logit-scaling base a = 8000.", "", "| a | long-context loss |",
                "|---|---|", "| off | 2.9 |", "| 8000 | 2.5 |", "| 16000 | 2.5 |", "", "> Warning: still falling"]


def test_report_without_losses_by_band_renders_as_before(tmp_path):
    export = {"path": "/x", "logit_scaling_base": 8000, "losses": {"off": 2.9, "8000": 2.50001, "16000": 2.50002},
              "warnings": ["still falling"]}
    for extra in ({}, {"losses_by_band": {}}):  # an old report, and a search-free export
        md = write_report(tmp_path / str(len(extra)), {"export": {**export, **extra}})[1].read_text()
        assert "\n".join(EXPORT_TABLE) in md and "**" not in md and "diagnostic" not in md


def test_report_shows_losses_by_band(tmp_path):
    export = {
        "path": "/x", "logit_scaling_base": 8000, "warnings": [],
        "losses": {"off": 2.9, "8000": 2.50001, "16000": 2.50002},
        "losses_by_band": {"16K-32K": {"off": 2.8, "8000": 2.40003, "16000": 2.40001},
                           "32K-64K": {"off": 3.0, "8000": 2.6, "16000": 2.61}},
    }
    md = write_report(tmp_path, {"export": export})[1].read_text()
    assert "chosen on the overall long-context loss" in md and "diagnostic" in md
    assert "\n".join([
        "| a | long-context loss | 16K-32K | 32K-64K |",
        "|---|---|---|---|",
        "| off | 2.9 | 2.8 | 3 |",
        "| 8000 | **2.50001** | 2.40003 | **2.6** |",
        "| 16000 | 2.50002 | **2.40001** | 2.61 |",
    ]) in md
    del export["losses_by_band"]["32K-64K"]["16000"]  # a value missing from a band
    md = write_report(tmp_path, {"export": export})[1].read_text()
    assert "| 16000 | 2.50002 | **2.40001** | - |" in md


def test_report_figure_draws_the_curves_the_scores_and_the_bases():
    report = {
        "stages": {"stage1": {"losses": [[1, 400.0], [2, 150.0], [3, 12.0]]},  # 33x: a log axis
                   "stage3": {"losses": [[1, 5.0], [2, 4.9], [3, 5.1]]}},
        "selection": {"scores": {"0": 1.0, "1": 0.0, "2": 0.02, "3": 50.0}, "attention_layers": [0, 3]},
        "export": {"logit_scaling_base": 500, "losses": {"off": 3.3, "100": 3.2, "500": 3.1, "2000": 3.15}},
    }
    fig = report_figure(report)
    curve1, curve3, scores, bases = fig.axes
    assert [ax.get_title() for ax in (curve1, curve3)] == ["stage1 loss", "stage3 loss"]
    assert (curve1.get_yscale(), curve3.get_yscale()) == ("log", "linear")
    assert list(curve3.get_xticks()) == [int(t) for t in curve3.get_xticks()]  # steps are whole numbers
    # layer 1's score of 0 keeps its place on a log axis (linear below the smallest positive score)
    assert scores.get_yscale() == "symlog" and scores.yaxis.get_transform().linthresh == 0.02
    assert [bar.get_height() for bar in scores.patches] == [1.0, 0.0, 0.02, 50.0]
    red = matplotlib.colors.to_rgba("tab:red")
    assert [bar.get_facecolor() == red for bar in scores.patches] == [True, False, False, True]
    assert bases.get_xscale() == "log"
    by_style = {line.get_linestyle(): line for line in bases.get_lines()}
    curve, written, off = by_style["-"], by_style["None"], by_style["--"]
    assert list(curve.get_xdata()) == [100, 500, 2000] and list(curve.get_ydata()) == [3.2, 3.1, 3.15]
    assert (list(written.get_xdata()), list(written.get_ydata())) == ([500], [3.1])
    assert matplotlib.colors.same_color(written.get_color(), "tab:red")
    assert list(off.get_ydata()) == [3.3, 3.3]  # logit scaling off: a level line
    assert curve1.get_lines()[0].get_marker() in ("None", None)
    matplotlib.pyplot.close(fig)
    assert report_figure({"teacher": "tiny"}) is None
    one_step = report_figure({"stages": {"stage3": {"losses": [[1, 5.0]]}}})  # a stage of one step is a dot
    assert one_step.axes[0].get_lines()[0].get_marker() == "o"
    matplotlib.pyplot.close(one_step)


def test_a_near_tie_without_a_tolerance_is_reported_with_the_commands_to_act_on_it(student, tokenizer, tmp_path,
                                                                                    monkeypatch):
    # the forty-first lease's export losses: 8000 0.01% above 16000's lowest, 4000 0.54% above
    loss_of = {None: 3.2, 4000: 2.8887, 8000: 2.8734, 16000: 2.8731, 32000: 2.8871}
    _fake_loss(monkeypatch, loss_of.get)
    with pytest.warns(NearTieWarning, match=r"cannot tell logit-scaling base 8000 from the lowest-loss base 16000 "
                                            r"\(within 0.1%\).*--logit-scaling-base 8000.*"
                                            r"export.logit_scaling_tolerance=0.001"):
        best, _ = choose_logit_scaling_base(student, [np.arange(2, 122)], tuple(loss_of), train_context=40)
    assert best == 16000  # a report, not a change of the paper's rule
    info = export_checkpoint(student, tokenizer, tmp_path / "ckpt", [np.arange(2, 122)], candidates=tuple(loss_of),
                             train_context=40, run_dir=tmp_path)
    assert info["logit_scaling_base"] == 16000 and len(info["warnings"]) == 1 and "8000" in info["warnings"][0]
    assert f"`hypenet export --out {tmp_path} --set export.logit_scaling_tolerance=0.001 --overwrite`" in \
        info["warnings"][0]  # the conversion's own folder, not a placeholder
    student.config.attention_logit_scaling_base = None
    with warnings.catch_warnings():
        warnings.simplefilter("error", NearTieWarning)  # with the tolerance, or no near base: no such warning
        assert choose_logit_scaling_base(student, [np.arange(2, 122)], tuple(loss_of), train_context=40,
                                         tolerance=0.001)[0] == 8000
        _fake_loss(monkeypatch, {None: 3.2, 8000: 2.8785, 16000: 2.8731}.get)  # 0.19% apart
        best, _ = choose_logit_scaling_base(student, [np.arange(2, 122)], (None, 8000, 16000), train_context=40)
        assert best == 16000
