"""Perplexity of held-out documents per context-length bucket, so a reader sees where a model degrades.

A token at position t (0-based) is predicted from the t tokens before it; its loss goes to the bucket that
holds t: [0, 1K), [1K, 2K), [2K, 4K), ... up to the longest position evaluated. Position 0 has no loss.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def bucket_edges(max_len: int, first: int = 1024) -> list[int]:
    """[0, first, 2*first, 4*first, ...] ending exactly at max_len."""
    if max_len < 2:
        raise ValueError(f"perplexity needs max_len >= 2 tokens; got {max_len}.")
    edges = [0]
    edge = first
    while edge < max_len:
        edges.append(edge)
        edge *= 2
    edges.append(max_len)
    return edges


@torch.no_grad()
def token_nlls(model, input_ids: torch.Tensor, logits_chunk: int = 4096) -> torch.Tensor:
    """Negative log-likelihood (fp32) of tokens 1..n-1 of one sequence, from one forward pass.

    The decoder runs once; its final hidden states go through the LM head `logits_chunk` positions at a time,
    so memory for logits stays at logits_chunk x vocab however long the sequence is.
    """
    hidden = model.base_model(input_ids=input_ids[None]).last_hidden_state[0, :-1]  # the last one predicts nothing
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    targets = input_ids[1:]
    nlls = []
    for start in range(0, len(targets), logits_chunk):
        logits = head(hidden[start:start + logits_chunk]).float()
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        nlls.append(F.cross_entropy(logits, targets[start:start + logits_chunk], reduction="none"))
    return torch.cat(nlls)


def perplexity_by_bucket(model, docs: Sequence[Sequence[int]], max_len: int, first_bucket: int = 1024,
                         logits_chunk: int = 4096, progress: bool = True) -> dict:
    """Mean NLL and perplexity per position bucket over the first max_len tokens of each document.

    Shorter documents count up to their length, so the later buckets hold fewer tokens: each bucket reports
    its token and document counts.
    """
    edges = bucket_edges(max_len, first_bucket)
    sums = [0.0] * (len(edges) - 1)
    tokens = [0] * (len(edges) - 1)
    docs_seen = [0] * (len(edges) - 1)
    device = next(model.parameters()).device
    lengths = [min(len(d), max_len) for d in docs]
    bar = tqdm(total=sum(lengths), unit="tok", unit_scale=True, desc="perplexity", disable=not progress)
    used_docs = 0
    for doc, length in zip(docs, lengths):
        if length < 2:
            continue
        used_docs += 1
        ids = torch.as_tensor(list(doc[:length]), dtype=torch.long, device=device)
        nll = token_nlls(model, ids, logits_chunk).cpu()  # nll[i] is the loss of position i + 1
        for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            part = nll[max(lo, 1) - 1: min(hi, length) - 1]
            if len(part):
                sums[b] += part.double().sum().item()
                tokens[b] += len(part)
                docs_seen[b] += 1
        bar.update(length)
    bar.close()
    buckets = []
    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        nll = sums[b] / tokens[b] if tokens[b] else None
        buckets.append({"start": lo, "end": hi, "tokens": tokens[b], "docs": docs_seen[b], "nll": nll,
                        "ppl": math.exp(nll) if nll is not None else None})
    total_tokens = sum(tokens)
    overall = sum(sums) / total_tokens if total_tokens else None
    return {"max_len": max_len, "docs": used_docs, "buckets": buckets, "nll": overall,
            "ppl": math.exp(overall) if overall is not None else None}
