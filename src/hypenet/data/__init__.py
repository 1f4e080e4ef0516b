"""The data layer of HALO: documents from a source, tokenised with the teacher's tokenizer, packed into chunks.

    from hypenet.data import PackedChunks, tokenize_corpus
    corpus = tokenize_corpus("builtin", tokenizer)          # or a file, a folder, "hf:NAME[:CONFIG][:SPLIT]"
    chunks = PackedChunks(corpus.train_tokens, seq_len=512, seed=0)
    for batch in chunks.batches(batch_size=32, num_steps=1000):   # LongTensor [32, 512]
        ...

docs/DATA.md describes the built-in corpus (`python -m hypenet.data install` sets it up) and its licences.
"""

from .._lazy import lazy_names

# the packing (numpy, torch) and the sources load when one of these is first asked for, so that `python -m
# hypenet.data --help` answers at once
__getattr__, __dir__ = lazy_names(__name__, globals(), {
    **dict.fromkeys(("PackedChunks", "TokenizedCorpus", "describe_corpus", "tokenize_corpus"), "packing"),
    **dict.fromkeys(("builtin_corpus_available", "iter_documents"), "sources")})

__all__ = [
    "PackedChunks",
    "TokenizedCorpus",
    "builtin_corpus_available",
    "describe_corpus",
    "iter_documents",
    "tokenize_corpus",
]
