"""Perplexity per position bucket against a hand computation on a tiny model."""

import math

import pytest
import torch
from test_eval_tiny import tiny_hypenet, tiny_llama, tiny_tokenizer

from hypenet.eval.perplexity import bucket_edges, perplexity_by_bucket, token_nlls


@pytest.fixture(scope="module")
def model():
    return tiny_llama(tiny_tokenizer()).double()


def test_bucket_edges_double_from_the_first_and_end_at_max_len():
    assert bucket_edges(65536) == [0, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
    assert bucket_edges(3000) == [0, 1024, 2048, 3000]
    assert bucket_edges(512) == [0, 512]
    assert bucket_edges(20, first=4) == [0, 4, 8, 16, 20]


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_hypenet])
def test_token_nlls_match_full_logits(make_model):
    model = make_model(tiny_tokenizer()).double()
    ids = torch.randint(0, model.config.vocab_size, (23,), generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.cross_entropy(model(ids[None]).logits[0, :-1], ids[1:], reduction="none")
    torch.testing.assert_close(token_nlls(model, ids, logits_chunk=5), expected.float())


def test_perplexity_by_bucket_equals_hand_computation(model):
    generator = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, model.config.vocab_size, (n,), generator=generator).tolist() for n in (40, 25, 1, 17)]
    max_len, first = 32, 4
    result = perplexity_by_bucket(model, docs, max_len, first_bucket=first, logits_chunk=7, progress=False)

    edges = [0, 4, 8, 16, 32]
    losses = {b: [] for b in range(len(edges) - 1)}
    for doc in docs:
        doc = doc[:max_len]
        if len(doc) < 2:
            continue
        with torch.no_grad():
            logits = model(torch.tensor([doc])).logits[0]
        for t in range(1, len(doc)):  # token t, predicted from tokens 0..t-1
            log_probs = logits[t - 1] - torch.logsumexp(logits[t - 1], dim=-1)
            bucket = next(b for b in losses if edges[b] <= t < edges[b + 1])
            losses[bucket].append(-log_probs[doc[t]].item())

    assert [(b["start"], b["end"]) for b in result["buckets"]] == list(zip(edges[:-1], edges[1:]))
    for b, bucket in enumerate(result["buckets"]):
        assert bucket["tokens"] == len(losses[b])
        assert bucket["nll"] == pytest.approx(sum(losses[b]) / len(losses[b]), rel=1e-6)
        assert bucket["ppl"] == pytest.approx(math.exp(sum(losses[b]) / len(losses[b])), rel=1e-6)
    # Documents of 32 (cut from 40), 25 and 17 tokens; the 1-token one has nothing to predict.
    assert [b["tokens"] for b in result["buckets"]] == [3 * 3, 3 * 4, 3 * 8, 16 + 9 + 1]
    assert [b["docs"] for b in result["buckets"]] == [3, 3, 3, 3]
    all_losses = [x for v in losses.values() for x in v]
    assert result["nll"] == pytest.approx(sum(all_losses) / len(all_losses), rel=1e-6)
    assert result["docs"] == 3
