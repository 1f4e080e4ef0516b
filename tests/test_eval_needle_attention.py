"""Where the attention layers look on a NIAH prompt (`hypenet.eval.needle_attention`, `--evals needle_attention`):
the last query's probabilities as SDPA weighs them, captured from the model's own attention calls, on the needle's
tokens."""

import json

import pytest
import torch
import torch.nn.functional as F
from test_eval_cli import model_dir  # noqa: F401  (fixture)
from test_eval_tiny import HAYSTACK_DOCS, tiny_hypenet, tiny_llama, tiny_tokenizer

from hypenet.eval.__main__ import main
from hypenet.eval.needle_attention import (
    captured_attention,
    evaluate_needle_attention,
    last_query_probabilities,
    needle_token_span,
    query_probabilities,
)
from hypenet.eval.niah import NIAH_TASKS, SINGLE_TASKS, build_niah_grid, needle_sentence


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def causal_lower_right(queries: int, keys: int) -> torch.Tensor:
    return torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries)


@pytest.mark.parametrize("case", ["causal", "bool mask", "float mask", "no mask, 1 query", "scale"])
def test_probabilities_weigh_the_values_as_sdpa_does(case):
    torch.manual_seed(0)
    queries = 1 if case == "no mask, 1 query" else 7
    q, k, v = torch.randn(2, 6, queries, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    options = {"enable_gqa": True}
    if case == "causal":
        options["is_causal"] = True
    elif case == "bool mask":
        options["attn_mask"] = causal_lower_right(queries, 7) & (torch.arange(7) != 2)  # key 2 hidden
    elif case == "float mask":
        options["attn_mask"] = torch.randn(2, 1, queries, 7)
    elif case == "scale":
        options["scale"] = 0.3
    p = last_query_probabilities(q, k, options.get("attn_mask"), options.get("is_causal", False),
                                 options.get("scale"))
    assert p.shape == (2, 6, 7) and torch.allclose(p.sum(-1), torch.ones(2, 6))
    expected = F.scaled_dot_product_attention(q, k, v, **options)[..., -1, :]
    assert torch.allclose(torch.einsum("bhs,bhsd->bhd", p, v.repeat_interleave(2, dim=1)), expected, atol=1e-6)
    if case == "bool mask":
        assert torch.all(p[..., 2] == 0)


@pytest.mark.parametrize("mask", [None, "bool"])
def test_probabilities_of_chosen_queries(mask):
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 4, 9, 8), torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8)
    options = {"is_causal": True} if mask is None else {"attn_mask": causal_lower_right(9, 9) & (torch.arange(9) > 0)}
    p = query_probabilities(q, k, options.get("attn_mask"), options.get("is_causal", False), rows=[2, 5, -1])
    expected = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **options)[:, :, [2, 5, 8]]
    assert torch.allclose(p @ v.repeat_interleave(2, dim=1), expected, atol=1e-6)
    assert torch.all(p[:, :, 0, 3:] == 0)  # query 2 sees keys 0-2 only


def test_a_causal_call_with_fewer_queries_than_keys_is_refused():
    with pytest.raises(ValueError, match="aligns the causal mask top-left"):
        last_query_probabilities(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), is_causal=True)


def test_captured_rows_are_the_transformers_attention_weights(tokenizer):
    model = tiny_llama(tokenizer)
    ids = torch.randint(3, len(tokenizer), (1, 50))
    records = []
    with torch.no_grad(), captured_attention(records):
        logits = model(ids).logits
    assert F.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"  # restored
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits)  # the calls themselves ran unchanged
        model.set_attn_implementation("eager")
        weights = model(ids, output_attentions=True).attentions
    assert len(records) == len(weights) == 2
    for captured, eager in zip(records, weights):
        assert torch.allclose(captured, eager[:, :, -1, :].float(), atol=1e-6)


def test_hypenet_attention_layers_are_captured_and_named(tokenizer):
    model = tiny_hypenet(tokenizer)
    samples = build_niah_grid(tokenizer, ["single_1", "single_2"], [300, 420], [0.5], 1, seed=3,
                              haystack_docs=HAYSTACK_DOCS)
    result = evaluate_needle_attention(model, tokenizer, samples, progress=False)
    assert result["layers"] == ["layer 1"]  # the one attention layer among lightning layers
    assert set(result["tasks"]) == {"single_1", "single_2"}
    for by_length in result["tasks"].values():
        assert set(by_length) == {"300", "420"}
        for cell in by_length.values():
            assert cell["samples"] == 1 and len(cell["mean"]) == len(cell["max_head"]) == 1
            assert 0 < cell["mean"][0] <= cell["max_head"][0] <= 1 and 0 < cell["uniform"] < 0.2


def test_needle_span_holds_the_needle(tokenizer):
    samples = build_niah_grid(tokenizer, list(SINGLE_TASKS), [300], [0.0, 0.5, 1.0], 1, seed=1,
                              haystack_docs=HAYSTACK_DOCS)
    for sample in samples:
        first, last = needle_token_span(tokenizer, sample)
        ids = tokenizer(sample.prompt, add_special_tokens=sample.add_special_tokens)["input_ids"]
        needle = needle_sentence(NIAH_TASKS[sample.task], sample.key, sample.value)
        assert needle in tokenizer.decode(ids[first:last])
        # no wider than it: without its first or last token the needle is cut
        assert needle not in tokenizer.decode(ids[first + 1:last])
        assert needle not in tokenizer.decode(ids[first:last - 1])


def test_eval_cli_writes_where_the_attention_goes(model_dir, tmp_path):  # noqa: F811
    out = tmp_path / "attention"
    assert main([str(model_dir), "--evals", "needle_attention", "--tasks", "single_1", "--niah-lengths", "200,240",
                 "--niah-depths", "0.5", "--needle-attention-samples", "2", "--device", "cpu", "--out", str(out),
                 "--label", "tiny", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    attention = results["needle_attention"]
    assert attention["layers"] == ["layer 0", "layer 1"]
    assert {length: cell["samples"] for length, cell in attention["tasks"]["single_1"].items()} == {"200": 2, "240": 2}
    assert (out / "needle_attention.png").is_file() and "needle_attention.png" in (out / "report.md").read_text()
    # compare: every model's layers on one figure (a HypeNet student has points at its attention layers only)
    compare_out = tmp_path / "compare"
    assert main(["compare", str(out), str(out / "results.json"), "--out", str(compare_out)]) == 0
    assert (compare_out / "needle_attention.png").is_file()
    assert "needle_attention.png" in (compare_out / "report.md").read_text()


def test_with_yarn_the_lengths_past_the_window_are_measured_with_yarn(model_dir, tmp_path):  # noqa: F811
    from hypenet.eval.models import load_model_for_eval, yarn_rope_scaling

    options = ["--evals", "needle_attention", "--tasks", "single_1", "--niah-lengths", "200,400", "--niah-depths",
               "0.5", "--needle-attention-samples", "1", "--device", "cpu", "--no-progress"]
    assert main([str(model_dir), *options, "--out", str(tmp_path / "as_is")]) == 0
    assert main([str(model_dir), *options, "--yarn", "--out", str(tmp_path / "yarn")]) == 0
    as_is, yarn = (json.loads((tmp_path / name / "results.json").read_text())["needle_attention"]
                   for name in ("as_is", "yarn"))
    assert yarn["yarn"] == {"trained_context_length": 256, "factors": {"400": 400 / 256}} and "yarn" not in as_is
    assert yarn["layers"] == as_is["layers"] == ["layer 0", "layer 1"]
    assert yarn["tasks"]["single_1"]["200"] == as_is["tasks"]["single_1"]["200"]  # within the window: as it is
    assert yarn["tasks"]["single_1"]["400"] != as_is["tasks"]["single_1"]["400"]
    # past it: what the model loaded with YaRN for 400 tokens gives on the same prompt
    model, tokenizer = load_model_for_eval(model_dir, "cpu", rope_scaling=yarn_rope_scaling(256, 400))
    grid = build_niah_grid(tokenizer, ["single_1"], [400], [0.5], 1, 0)
    expected = evaluate_needle_attention(model, tokenizer, grid, progress=False)["tasks"]["single_1"]["400"]
    got = yarn["tasks"]["single_1"]["400"]
    assert (got["samples"], got["uniform"]) == (expected["samples"], expected["uniform"])
    for key in ("mean", "max_head"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5)


def test_halo_probe_attention_script(model_dir, tmp_path, monkeypatch):  # noqa: F811
    from conftest import load_script

    from hypenet.eval import documents

    script = load_script("halo_probe_attention")
    texts = [" ".join([doc] * 20) for doc in HAYSTACK_DOCS]
    monkeypatch.setattr(documents, "heldout_token_docs", lambda tokenizer, n, *args, **kwargs: [
        tokenizer(text)["input_ids"] for text in texts[:n]])
    out = tmp_path / "probe.json"
    assert script.main(["--model", str(model_dir), "--samples", "2", "--context", "128", "--top", "2",
                        "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    for name in ("filler", "heldout"):
        assert set(results[name]["needle_attention"]) == {"0", "1"} and len(results[name]["top"]) == 2


def four_layer_llama(tokenizer) -> "torch.nn.Module":
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def heldout_token_docs(tokenizer) -> list:
    """HAYSTACK_DOCS as a corpus's held-out documents are: token ids with EOS after each."""
    import numpy as np

    return [np.array([*tokenizer(text)["input_ids"], tokenizer.eos_token_id]) for text in HAYSTACK_DOCS]


def test_the_needle_strategy_keeps_the_layers_that_look_most_at_the_needle(tokenizer):
    """select.strategy=needle: the k layers whose most-looking head puts the most attention on the needle sentence,
    averaged over NIAH-Single-2 prompts built from the held-out documents' text, as the eager attention weights of the
    same prompts give them."""
    from hypenet.halo.select import NEEDLE_DEPTHS, NEEDLE_TASK, needle_layers, select_layers

    model = four_layer_llama(tokenizer)
    docs = heldout_token_docs(tokenizer)
    layers, shares = needle_layers(model, tokenizer, docs, 2, context=192, samples=7, seed=4, progress=False)
    # 7 samples: 2 per depth; the prompts rebuilt from the same texts, their weights taken from eager attention
    grid = build_niah_grid(tokenizer, [NEEDLE_TASK], [192], NEEDLE_DEPTHS, 2, 4, HAYSTACK_DOCS)
    assert len(grid) == 10
    model.set_attn_implementation("eager")
    expected = torch.zeros(4)
    with torch.no_grad():
        for sample in grid:
            first, last = needle_token_span(tokenizer, sample)
            ids = tokenizer(sample.prompt, return_tensors="pt")["input_ids"]
            weights = model(input_ids=ids, output_attentions=True).attentions
            expected += torch.stack([w[0, :, -1, first:last].sum(-1).max() for w in weights])
    model.set_attn_implementation("sdpa")
    expected /= len(grid)
    assert [shares[i] for i in range(4)] == pytest.approx(expected.tolist(), abs=1e-5)
    assert layers == sorted(expected.argsort(descending=True)[:2].tolist())
    result = select_layers(model, tokenizer, None, strategy="needle", num_attention=2, heldout_docs=docs,
                           recall_samples=7, recall_context=192, seed=4, progress=False)
    assert (result.strategy, result.attention_layers, result.needle_attention) == ("needle", layers, shares)
    assert result.settings["probes"] == "niah single_2" and result.settings["num_attention"] == 2
    assert result.mixer_types().count("attention") == 2


def test_the_needle_strategy_says_what_it_needs(tokenizer):
    from hypenet.halo.select import select_layers

    model = four_layer_llama(tokenizer)
    with pytest.raises(ValueError, match="raise data.heldout_fraction"):
        select_layers(model, tokenizer, None, strategy="needle", heldout_docs=[], recall_context=128, progress=False)
    with pytest.raises(ValueError, match=r"^strategy 'needle': context length 128 is too short for a single_2 prompt: "
                                         r"the template alone takes \d+ tokens; raise select.recall_context"):
        select_layers(model, tokenizer, None, strategy="needle", heldout_docs=heldout_token_docs(tokenizer),
                      recall_samples=1, recall_context=128, progress=False)
    model.set_attn_implementation("eager")
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        select_layers(model, tokenizer, None, strategy="needle", heldout_docs=heldout_token_docs(tokenizer),
                      recall_samples=1, recall_context=192, progress=False)


def test_the_plan_counts_the_needle_strategys_teacher_passes(tokenizer):
    """`plan.selection_flops` for strategy needle: the Linear layers' model FLOPs that its teacher passes run (torch's
    FLOP counter on the real selection), up to the prompts' few tokens more or less than recall_context."""
    from torch.utils.flop_counter import FlopCounterMode

    from hypenet.halo.config import load_config
    from hypenet.halo.plan import needle_prompts, selection_flops, selection_tokens
    from hypenet.halo.select import select_layers

    model = four_layer_llama(tokenizer)
    config = load_config(overrides=["select.strategy=needle", "select.recall_samples=6", "select.recall_context=160"])
    assert needle_prompts(config) == 10 and selection_tokens(config, 4) == 10 * 160
    with FlopCounterMode(display=False) as counter:
        select_layers(model, tokenizer, None, strategy="needle", heldout_docs=heldout_token_docs(tokenizer),
                      recall_samples=6, recall_context=160, progress=False)
    counted = counter.get_flop_counts()["Global"][torch.ops.aten.mm]
    assert selection_flops(model, None, config) == pytest.approx(counted, rel=0.03)
