"""Tokenised corpora and the fixed-length training chunks cut from them.

Documents are tokenised with the teacher's tokenizer, EOS appended to each, split into held-out and training
documents, and the training documents concatenated into one flat array (SPEC section 3). `PackedChunks` cuts that
array into seq_len chunks and serves them in a seeded order that is a pure function of the step, so a resumed run
sees exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .sources import iter_documents, source_files
from .unwrap import unwrap_paragraphs as unwrap_text
from .unwrap import wrapped_chars

__all__ = ["PackedChunks", "TokenizedCorpus", "default_cache_dir", "describe_corpus", "tokenize_corpus",
           "tokenizer_fingerprint"]

CACHE_FORMAT = 1  # bump when the cached files or the tokenisation change meaning
TOKENIZE_BATCH_CHARS = 4_000_000  # text handed to the fast tokenizer per call; it tokenises a batch on all cores
REPEAT_SPAN_TOKENS = (8, 64)  # PackedChunks(repeat_spans=...): the shortest and longest span written again
NUMBER_DIGITS = (5, 10)  # PackedChunks(repeat_numbers=...): the fewest and most digits of a made-up number
NUMBER_LEAD_TOKENS = (4, 16)  # ... and how many tokens of the text before it are copied with it
DECOY_TRIES = 8  # PackedChunks(number_decoys=...): places drawn for a decoy before it is left out
VALUE_KINDS = ("number", "uuid")  # repeat_number(value=...): what a made-up value is
WRAPPED_HINT_SHARE = 0.2  # unwrap_paragraphs off: warn when at least this share of the text read is wrapped prose
# (the built-in corpus: 26% of its characters; students distilled on it broke the line where the teacher did not)


def default_cache_dir() -> Path:
    return Path("~/.cache/hypenet/corpora").expanduser()


@dataclass
class TokenizedCorpus:
    train_tokens: np.ndarray  # flat uint16/uint32 ids of every training document, EOS after each
    heldout_docs: list[np.ndarray]  # held-out documents (ids, EOS appended); none of them is in train_tokens
    eos_token_id: int
    tokenizer_name: str

    def num_train_tokens(self) -> int:
        return int(len(self.train_tokens))

    def long_heldout_docs(self, min_tokens: int) -> list[np.ndarray]:
        """Held-out documents of at least min_tokens tokens (EOS included), in corpus order."""
        return [doc for doc in self.heldout_docs if len(doc) >= min_tokens]


def describe_corpus(corpus: TokenizedCorpus) -> dict:
    """Sizes of a corpus for reports and logs."""
    lengths = [len(doc) for doc in corpus.heldout_docs]
    return {
        "tokenizer": corpus.tokenizer_name,
        "eos_token_id": corpus.eos_token_id,
        "train_tokens": corpus.num_train_tokens(),
        "train_docs": int(np.count_nonzero(np.asarray(corpus.train_tokens) == corpus.eos_token_id)),
        "heldout_docs": len(lengths),
        "heldout_tokens": int(sum(lengths)),
        "longest_heldout_doc": max(lengths, default=0),
        "heldout_docs_by_min_tokens": {n: sum(length >= n for length in lengths) for n in (4096, 16384, 65536)},
    }


def _unit_hash(seed: int, index: int | str) -> float:
    """A uniform number in [0, 1) fixed by (seed, index)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides the ids: a fast tokenizer's full definition, else its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{definition}".encode()).hexdigest()


def _source_fingerprint(source: str) -> list:
    """What identifies the source's content: name, size and mtime of every file it reads (hf: only by name)."""
    return [source] + [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in source_files(source)]


def _token_dtype(tokenizer) -> np.dtype:
    return np.dtype(np.uint16) if len(tokenizer) <= 2**16 else np.dtype(np.uint32)


def tokenize_corpus(source: str, tokenizer, *, heldout_fraction: float = 0.02, max_tokens: int | None = None,
                    seed: int = 0, cache_dir: str | Path | None = None, min_heldout_docs: int = 1,
                    progress: bool = True, text_field: str = "text", long_doc_tokens: int = 16384,
                    long_heldout_fraction: float = 0.25, unwrap_paragraphs: float = 0.0,
                    wrapped_hint: bool = True) -> TokenizedCorpus:
    """Tokenise the documents of `source` (see iter_documents) with `tokenizer` into a TokenizedCorpus.

    No special tokens are added except EOS, appended after each document. Document i is held out when a hash of
    (seed, i) falls below heldout_fraction; if that holds out fewer than min_heldout_docs documents (and
    heldout_fraction > 0), the training documents with the smallest hashes are held out as well (never the last
    one) and reading goes on to make up for them. Documents of at least long_doc_tokens tokens are held out at the
    higher rate long_heldout_fraction (same hash), so that evaluation beyond the training context and the choice of
    the logit-scaling base have long documents that training never saw. Reading stops once max_tokens training
    tokens are there (None: the whole source), and train_tokens is cut to exactly max_tokens. unwrap_paragraphs > 0:
    the training documents (not the held-out ones, which keep the source's format) have that share of their
    hard-wrapped paragraphs joined into one line each (`data.unwrap.unwrap_paragraphs`, seeded by (seed, i)); which
    documents are held out does not change; with it off, a warning suggests it when much of the text read is wrapped
    prose (wrapped_hint=False: no warning, for callers that do not train on the corpus). The result is cached under
    cache_dir (default ~/.cache/hypenet/corpora) keyed by the source's files, the tokenizer's vocabulary and these
    settings, so the next call with the same inputs loads it (train_tokens memory-mapped) instead of tokenising
    again.
    """
    source = str(source)
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive or None, got {max_tokens}")
    if not 0 <= unwrap_paragraphs <= 1:
        raise ValueError(f"unwrap_paragraphs must be in [0, 1], got {unwrap_paragraphs}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token; set tokenizer.eos_token first")
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    settings = {"format": CACHE_FORMAT, "source": _source_fingerprint(source), "text_field": text_field,
                "tokenizer": tokenizer_fingerprint(tokenizer), "eos": eos, "heldout_fraction": heldout_fraction,
                "max_tokens": max_tokens, "seed": seed, "min_heldout_docs": min_heldout_docs,
                "long_doc_tokens": long_doc_tokens, "long_heldout_fraction": long_heldout_fraction}
    if unwrap_paragraphs:  # only when used, so that the caches made before the option existed stay valid
        settings["unwrap_paragraphs"] = unwrap_paragraphs
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cached = folder / key
    if (cached / "meta.json").is_file():
        return _load(cached)

    dtype = _token_dtype(tokenizer)
    texts = iter_documents(source, text_field=text_field)
    wrapped = [0, 0]  # characters in wrapped-prose paragraphs, characters read (counted without unwrap_paragraphs)
    if unwrap_paragraphs:  # each document, then its unwrapped copy: the pair is tokenised in the same batches
        texts = (text for index, original in enumerate(texts) for text in
                 (original, unwrap_text(original, unwrap_paragraphs, random.Random(f"unwrap:{seed}:{index}"))))
    else:
        texts = _counting_wrapped(texts, wrapped)
    stream = _tokenized(texts, tokenizer, dtype, progress, f"{source} and its unwrapped copies" if unwrap_paragraphs
                        else source)
    # (document as read, document to train on): the first decides the split and is what is held out
    documents = enumerate(zip(stream, stream) if unwrap_paragraphs else ((doc, doc) for doc in stream))
    train, heldout, train_hashes = [], [], []  # train_hashes[j]: the hash of train[j]'s document
    train_originals = []  # train_originals[j]: train[j] as read (held out instead when min_heldout_docs asks)

    def read_until_budget() -> None:
        n_train = sum(len(doc) for doc in train)
        for index, (doc, train_doc) in documents:
            u = _unit_hash(seed, index)
            rate = max(heldout_fraction, long_heldout_fraction) if len(doc) >= long_doc_tokens else heldout_fraction
            if u < rate:
                heldout.append(doc)
            else:
                train.append(train_doc)
                train_originals.append(doc)
                train_hashes.append(u)
                n_train += len(train_doc)
                if max_tokens is not None and n_train >= max_tokens:
                    return

    read_until_budget()  # iter_documents raises ValueError if the source holds no documents
    shortfall = min(min_heldout_docs - len(heldout), len(train) - 1) if heldout_fraction > 0 else 0
    if shortfall > 0:  # too few documents fell below the threshold: also hold out the smallest hashes of the rest
        moved = set(np.argsort(train_hashes, kind="stable")[:shortfall].tolist())
        heldout += [doc for j, doc in enumerate(train_originals) if j in moved]
        train = [doc for j, doc in enumerate(train) if j not in moved]
        train_originals = [doc for j, doc in enumerate(train_originals) if j not in moved]
        train_hashes = [u for j, u in enumerate(train_hashes) if j not in moved]
        read_until_budget()  # refill the training tokens the moved documents took

    if wrapped_hint and wrapped[1] and wrapped[0] >= WRAPPED_HINT_SHARE * wrapped[1]:
        warnings.warn(
            f"{wrapped[0] / wrapped[1]:.0%} of the text read from {source} is hard-wrapped prose (paragraphs broken "
            "into short lines). Students distilled on such text learnt to break the line where the teacher would "
            "go on (docs/DATA.md, unwrap_paragraphs): consider `--set data.unwrap_paragraphs=0.5`, which joins "
            "half of the training documents' wrapped paragraphs and keeps the held-out ones as they are.",
            stacklevel=2)
    train_tokens = np.concatenate(train) if train else np.empty(0, dtype=dtype)
    if max_tokens is not None:
        train_tokens = train_tokens[:max_tokens]
    corpus = TokenizedCorpus(train_tokens, heldout, int(eos), name)
    _save(corpus, cached, settings)
    return _load(cached)


def _counting_wrapped(texts: Iterator[str], counts: list[int]) -> Iterator[str]:
    """`texts` unchanged, adding each one's characters in wrapped-prose paragraphs to counts[0], all to counts[1]."""
    for text in texts:
        counts[0] += wrapped_chars(text)
        counts[1] += len(text)
        yield text


def _tokenized(texts: Iterator[str], tokenizer, dtype: np.dtype, progress: bool, source: str) -> Iterator[np.ndarray]:
    """Each text's token ids with EOS appended, tokenised in batches of about TOKENIZE_BATCH_CHARS characters."""
    bar = tqdm(desc=f"tokenising {source}", unit=" tok", unit_scale=True, disable=not progress, dynamic_ncols=True)
    batch: list[str] = []
    for text in itertools.chain(texts, [None]):  # None flushes the last batch
        if text is not None:
            batch.append(text)
        if batch and (text is None or sum(map(len, batch)) >= TOKENIZE_BATCH_CHARS):
            for ids in tokenizer(batch, add_special_tokens=False, return_attention_mask=False)["input_ids"]:
                doc = np.empty(len(ids) + 1, dtype=dtype)
                doc[:-1] = ids
                doc[-1] = tokenizer.eos_token_id
                bar.update(len(doc))
                yield doc
            batch = []
    bar.close()


def _save(corpus: TokenizedCorpus, folder: Path, settings: dict) -> None:
    """Write the corpus to `folder` atomically (a temporary folder renamed), so readers never see half a cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        np.save(tmp / "train.npy", corpus.train_tokens)
        lengths = np.array([len(doc) for doc in corpus.heldout_docs], dtype=np.int64)
        heldout = np.concatenate(corpus.heldout_docs) if corpus.heldout_docs else corpus.train_tokens[:0]
        np.save(tmp / "heldout.npy", heldout)
        np.save(tmp / "heldout_lengths.npy", lengths)
        meta = {"eos_token_id": corpus.eos_token_id, "tokenizer_name": corpus.tokenizer_name, "settings": settings,
                "train_tokens": corpus.num_train_tokens(), "heldout_docs": len(lengths)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process cached the same corpus first
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load(folder: Path) -> TokenizedCorpus:
    meta = json.loads((folder / "meta.json").read_text())
    heldout = np.load(folder / "heldout.npy")
    offsets = np.cumsum(np.load(folder / "heldout_lengths.npy"))[:-1]
    return TokenizedCorpus(
        train_tokens=np.load(folder / "train.npy", mmap_mode="r"),
        heldout_docs=np.split(heldout, offsets) if len(heldout) else [],
        eos_token_id=meta["eos_token_id"],
        tokenizer_name=meta["tokenizer_name"],
    )


def repeat_span(chunk: np.ndarray, rng: np.random.Generator, shortest: int, longest: int) -> np.ndarray:
    """A copy of `chunk` in which a span of `shortest` to `longest` tokens from its first half is written again, over
    the tokens there, at a random place after it: text the teacher continues by copying, as it copies a needle's
    value. A chunk shorter than 4 x shortest comes back as it is."""
    if len(chunk) < 4 * shortest:
        return chunk
    length = int(rng.integers(shortest, min(longest, len(chunk) // 4) + 1))
    source = int(rng.integers(0, len(chunk) // 2 - length + 1))
    target = int(rng.integers(source + length, len(chunk) - length + 1))
    out = chunk.copy()
    out[target:target + length] = chunk[source:source + length]
    return out


def made_up_number(rng: np.random.Generator, count: int) -> str:
    """" " and `count` random digits, the first not 0."""
    return " " + str(int(rng.integers(1, 10))) + "".join(str(d) for d in rng.integers(0, 10, size=count - 1))


def made_up_uuid(rng: np.random.Generator) -> str:
    """" " and a random version-4 UUID in its 8-4-4-4-12 hex form, as NIAH's Single-3 values are written."""
    return " " + str(uuid.UUID(bytes=rng.bytes(16), version=4))


def repeat_number(chunk: np.ndarray, rng: np.random.Generator, number_ids: Callable[[str], Sequence[int]],
                  digits: tuple[int, int] = NUMBER_DIGITS, lead: tuple[int, int] = NUMBER_LEAD_TOKENS,
                  decoys: int = 0, placed: list | None = None, value: str = "number") -> np.ndarray:
    """A copy of `chunk` with a made-up number (" " and `digits` random digits, the first not 0, as `number_ids`
    tokenizes it) written over the tokens at a random place in its first half, then that number with the `lead`
    tokens of text before it written again at a random place after it: a value among the chunk's own text and
    numbers, copied as a needle's value is, its first digits leading to the rest. With `decoys`, that many other
    made-up numbers of as many digits are written at random places before the copy (not over or against the number,
    the text copied with it or each other; one that finds no room after a few tries is left out): look-alikes that
    only the text before the number tells apart, as a haystack of needles asks. A chunk shorter than 4 x the span
    comes back as it is. `placed`, when given, gets (kind, start, end) for each value written, kind "number" (the
    planted value, a UUID too), "copy" or "decoy" and [start, end) its tokens (the draws are the same with or without
    it). With value="uuid" the value and the decoys are made-up UUIDs (`made_up_uuid`) instead, `digits` unused: the
    values of NIAH's Single-3."""
    if value not in VALUE_KINDS:
        raise ValueError(f"value is what a made-up value is, one of {', '.join(VALUE_KINDS)}; got {value!r}")
    count = int(rng.integers(digits[0], digits[1] + 1)) if value == "number" else 0
    make = (lambda: made_up_number(rng, count)) if value == "number" else (lambda: made_up_uuid(rng))
    text = make()
    ids = np.asarray(number_ids(text), dtype=chunk.dtype)
    before = int(rng.integers(lead[0], lead[1] + 1))
    span = before + len(ids)
    if len(ids) == 0 or len(chunk) < 4 * span:
        return chunk
    start = int(rng.integers(before, len(chunk) // 2 - len(ids) + 1))  # the number at [start, start + len(ids))
    out = chunk.copy()
    out[start:start + len(ids)] = ids
    source = start - before
    target = int(rng.integers(source + span, len(chunk) - span + 1))
    out[target:target + span] = out[source:source + span]
    taken = [(source, source + span), (target, target + span)]  # (the draws above are the same with or without)
    if placed is not None:
        placed += [("number", start, start + len(ids)), ("copy", target + before, target + span)]
    for _ in range(decoys):
        decoy = make()
        decoy_ids = np.asarray(number_ids(decoy), dtype=chunk.dtype) if decoy != text else ids[:0]
        for _ in range(DECOY_TRIES if 0 < len(decoy_ids) <= target else 0):
            at = int(rng.integers(0, target - len(decoy_ids) + 1))
            if all(at + len(decoy_ids) < a or b < at for a, b in taken):  # (a token between: no two numbers join)
                out[at:at + len(decoy_ids)] = decoy_ids
                taken.append((at, at + len(decoy_ids)))
                if placed is not None:
                    placed.append(("decoy", at, at + len(decoy_ids)))
                break
    return out


class PackedChunks:
    """Fixed-length training chunks cut from a flat token array, served in a seeded, resumable order.

    Chunk c is tokens[c * seq_len : (c + 1) * seq_len]; the tail shorter than seq_len is never used, so no chunk
    crosses the end of the array (positions restart at 0 in every chunk: the model sees each chunk on its own).
    Chunks are read as one stream, epoch after epoch, each epoch in its own permutation seeded by (seed, epoch);
    global batch s holds stream items s*batch_size ... (s+1)*batch_size - 1. Batch s is therefore a function of
    (tokens, seq_len, seed, batch_size, s) alone: resuming at start_step=k gives exactly the batches k, k+1, ... of
    an uninterrupted run, whatever the number of processes. With repeat_spans > 0 that share of the items served
    has a span of span_tokens tokens from its first half written again later in it (`repeat_span`), also a function
    of (seed, item) alone; with repeat_numbers > 0, that share of those items has a made-up number planted in it and
    copied instead (`repeat_number`; number_ids tokenizes the number's text), with number_decoys look-alikes; with
    repeat_uuids > 0, another such share a made-up UUID (the numbers' items stay as they are without it).
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int = 0, repeat_spans: float = 0.0,
                 span_tokens: tuple[int, int] = REPEAT_SPAN_TOKENS, repeat_numbers: float = 0.0,
                 number_ids: Callable[[str], Sequence[int]] | None = None, number_decoys: int = 0,
                 repeat_uuids: float = 0.0):
        if seq_len <= 0:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if not 0 <= repeat_spans <= 1:
            raise ValueError(f"repeat_spans is a share of the chunks served, in [0, 1]; got {repeat_spans}")
        if not 0 < span_tokens[0] <= span_tokens[1]:
            raise ValueError(f"span_tokens must be (shortest, longest) with 0 < shortest <= longest; got {span_tokens}")
        if not 0 <= repeat_numbers <= 1:
            raise ValueError(f"repeat_numbers is a share of the chunks with a repeated span, in [0, 1]; got "
                             f"{repeat_numbers}")
        if not (0 <= repeat_uuids and repeat_numbers + repeat_uuids <= 1 + 1e-9):
            raise ValueError(f"repeat_uuids is a share of the chunks with a repeated span, in [0, 1 - repeat_numbers]"
                             f" = [0, {1 - repeat_numbers:g}]; got {repeat_uuids}")
        if (repeat_numbers or repeat_uuids) and number_ids is None:
            raise ValueError("repeat_numbers and repeat_uuids need number_ids, the tokenizer's ids of a value's text")
        if isinstance(number_decoys, bool) or not isinstance(number_decoys, int) or number_decoys < 0:
            raise ValueError(f"number_decoys is a count of made-up numbers, 0 or more; got {number_decoys!r}")
        if number_decoys and not (repeat_numbers or repeat_uuids):
            raise ValueError("number_decoys go beside the numbers that repeat_numbers plants (or the UUIDs of "
                             "repeat_uuids): set repeat_numbers too")
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.repeat_spans, self.span_tokens = repeat_spans, span_tokens
        self.repeat_numbers, self.number_ids, self.number_decoys = repeat_numbers, number_ids, number_decoys
        self.repeat_uuids = repeat_uuids
        self.num_chunks = len(tokens) // seq_len
        self._permutation: tuple[int, np.ndarray] | None = None  # the last epoch's order, (epoch, permutation)
        self._warned = False

    def __len__(self) -> int:
        """The number of chunks in one epoch."""
        return self.num_chunks

    def chunk(self, index: int) -> np.ndarray:
        return self.tokens[index * self.seq_len:(index + 1) * self.seq_len]

    def order(self, epoch: int) -> np.ndarray:
        """The chunk indices of `epoch`, in the order they are served."""
        if self._permutation is None or self._permutation[0] != epoch:
            self._permutation = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_chunks))
        return self._permutation[1]

    def served(self, item: int, placed: list | None = None) -> np.ndarray:
        """Stream item `item`: its chunk, with a span repeated in it for a `repeat_spans` share of the items, a
        `repeat_numbers` share of those a made-up number and a `repeat_uuids` share a made-up UUID (chosen, like the
        span, by (seed, item) alone). `placed`, when given, gets where each made-up value went (`repeat_number`)."""
        chunk = self.chunk(int(self.order(item // self.num_chunks)[item % self.num_chunks]))
        if self.repeat_spans and _unit_hash(self.seed, f"repeat:{item}") < self.repeat_spans:
            rng = np.random.default_rng([self.seed, 0x5EED, item])
            share = _unit_hash(self.seed, f"number:{item}") if self.repeat_numbers or self.repeat_uuids else 1.0
            if share < self.repeat_numbers:
                chunk = repeat_number(chunk, rng, self.number_ids, decoys=self.number_decoys, placed=placed)
            elif share < self.repeat_numbers + self.repeat_uuids:  # (the hash's next interval: numbers' items kept)
                chunk = repeat_number(chunk, rng, self.number_ids, decoys=self.number_decoys, placed=placed,
                                      value="uuid")
            else:
                chunk = repeat_span(chunk, rng, *self.span_tokens)
        return chunk

    def batches(self, batch_size: int, start_step: int = 0, num_steps: int | None = None, *,
                rank: int = 0, world_size: int = 1) -> Iterator[torch.Tensor]:
        """LongTensor batches for global steps start_step, start_step + 1, ... (num_steps of them; None: no end).

        batch_size is the GLOBAL batch: the sequences of one optimizer step summed over all processes. With
        world_size processes, rank r gets rows [r * batch_size // world_size, (r + 1) * batch_size // world_size)
        of every global batch, a [batch_size // world_size, seq_len] tensor; the ranks' slices are disjoint and
        together make the global batch. batch_size must be a multiple of world_size.
        """
        if self.num_chunks == 0:
            raise ValueError(f"dataset has {len(self.tokens)} tokens, fewer than one chunk of seq_len={self.seq_len}")
        if batch_size <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size > 0 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        if batch_size % world_size:
            raise ValueError(f"the global batch_size ({batch_size}) must be a multiple of world_size ({world_size})")
        if start_step < 0 or (num_steps is not None and num_steps < 0):
            raise ValueError(f"start_step and num_steps must not be negative, got {start_step}, {num_steps}")
        if num_steps is not None:
            self._warn_if_repeating((start_step + num_steps) * batch_size)
        local = batch_size // world_size
        step = start_step
        while num_steps is None or step < start_step + num_steps:
            first = step * batch_size + rank * local
            if num_steps is None:
                self._warn_if_repeating(first + local)
            rows = [self.served(item) for item in range(first, first + local)]
            yield torch.from_numpy(np.stack(rows).astype(np.int64))
            step += 1

    def _warn_if_repeating(self, chunks_needed: int) -> None:
        if self._warned or chunks_needed <= self.num_chunks:
            return
        self._warned = True
        warnings.warn(
            f"dataset has {self.num_chunks * self.seq_len} tokens, budget needs {chunks_needed * self.seq_len}: "
            f"repeating for {math.ceil(chunks_needed / self.num_chunks)} epochs", stacklevel=3,
        )
