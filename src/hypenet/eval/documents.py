"""Real text for evaluation, from hypenet.data: NIAH-Single-2/3 haystacks and held-out documents for perplexity."""

from __future__ import annotations

import numpy as np

from hypenet.data import iter_documents, tokenize_corpus
from hypenet.halo.config import DataConfig

# HALO's default split, so that perplexity is measured on documents a converted model was not trained on.
DEFAULT_HELDOUT_FRACTION = DataConfig.heldout_fraction


def load_documents(source: str = "builtin", max_chars: int = 2_000_000) -> list[str]:
    """The first documents of a hypenet.data source, about max_chars characters in all (a 64K haystack needs ~300K)."""
    documents, total = [], 0
    for text in iter_documents(source):
        documents.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return documents


def token_docs_text(tokenizer, token_docs, max_chars: int = 2_000_000) -> list[str]:
    """A corpus's documents (token ids, EOS last, as `tokenize_corpus` keeps them) as text, in order, until about
    max_chars characters: the ids decoded, EOS dropped, which gives the text back for a byte-level tokenizer."""
    documents, total = [], 0
    for ids in token_docs:
        documents.append(tokenizer.decode(ids[:-1].tolist()))
        total += len(documents[-1])
        if total >= max_chars:
            break
    return documents


def heldout_documents(tokenizer, source: str = "builtin", heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
                      seed: int = 0, max_chars: int = 2_000_000, progress: bool = True) -> list[str]:
    """The held-out documents of `source` (HALO's split for this fraction and seed) as text, in corpus order, about
    max_chars characters in all: NIAH haystacks that a student converted on `source` never trained on. The texts
    are the documents' token ids decoded (EOS dropped), which gives the text back for a byte-level tokenizer."""
    corpus = tokenize_corpus(source, tokenizer, heldout_fraction=heldout_fraction, seed=seed, progress=progress,
                             wrapped_hint=False)  # the hint is a training setting; evaluation reads text as it is
    documents = token_docs_text(tokenizer, corpus.heldout_docs, max_chars)
    if not documents:
        raise ValueError(f"{source} has no held-out document at heldout_fraction={heldout_fraction}: raise the "
                         "fraction (--ppl-heldout-fraction) or leave out --haystack-heldout")
    return documents


def heldout_token_docs(tokenizer, n_docs: int, max_len: int, source: str = "builtin",
                       heldout_fraction: float = DEFAULT_HELDOUT_FRACTION, seed: int = 0,
                       progress: bool = True) -> list[np.ndarray]:
    """n_docs held-out documents of `source` (HALO's split for this fraction and seed), cut to max_len tokens.

    Documents of at least max_len tokens come first, in corpus order; if there are too few, the longest others
    fill up (the perplexity buckets report how many documents reach each length).
    """
    # HALO's own call (same fraction and seed, other settings at their defaults), so the split is the same.
    corpus = tokenize_corpus(source, tokenizer, heldout_fraction=heldout_fraction, seed=seed, progress=progress,
                             wrapped_hint=False)  # the hint is a training setting; evaluation reads text as it is
    long_docs = corpus.long_heldout_docs(max_len)
    others = sorted((d for d in corpus.heldout_docs if len(d) < max_len), key=len, reverse=True)
    return [doc[:max_len] for doc in (long_docs + others)[:n_docs]]
