"""hypenet.data: document sources, tokenisation with held-out split and cache, packed resumable chunks."""

from __future__ import annotations

import json
import random
import re
import sys
import warnings

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hypenet.data import (
    PackedChunks,
    TokenizedCorpus,
    builtin_corpus_available,
    describe_corpus,
    iter_documents,
    tokenize_corpus,
)
from hypenet.data.builtin import html_to_text, split_long
from hypenet.data.packing import made_up_uuid, repeat_number

WORDS = [f"w{i}" for i in range(50)]
N_DOCS = 40


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {"<unk>": 0, "<eos>": 1}
    for word in WORDS + [f"doc{i}" for i in range(N_DOCS)]:
        vocab[word] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


def make_docs(n: int = N_DOCS) -> list[str]:
    """Documents of different lengths, each starting with its own marker word docI."""
    rng = np.random.default_rng(0)
    return [" ".join([f"doc{i}"] + [WORDS[j] for j in rng.integers(0, len(WORDS), 5 + 7 * i)]) for i in range(n)]


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(make_docs())))
    return path


def corpus_of(source, tokenizer, tmp_path, **kw):
    kw.setdefault("cache_dir", tmp_path / "cache")
    return tokenize_corpus(str(source), tokenizer, progress=False, **kw)


# ---------------------------------------------------------------- sources


def test_txt_file_is_one_document(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\nsecond line\n")
    assert list(iter_documents(str(path))) == ["first line\nsecond line\n"]


def test_jsonl_reads_the_text_field(jsonl, tmp_path):
    assert list(iter_documents(str(jsonl))) == make_docs()
    other = tmp_path / "b.jsonl"
    other.write_text('{"body": "x y"}\n\n{"body": "z"}\n')
    assert list(iter_documents(str(other), text_field="body")) == ["x y", "z"]
    with pytest.raises(ValueError, match="no field 'text'.*body"):
        list(iter_documents(str(other)))


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": make_docs(5), "n": list(range(5))}), path)
    assert list(iter_documents(str(path))) == make_docs(5)
    with pytest.raises(ValueError, match="no column 'body'"):
        list(iter_documents(str(path), text_field="body"))


def test_folder_is_read_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "b" / "c" / "z.txt").write_text("deep")
    (tmp_path / "b" / "a.jsonl").write_text('{"text": "j1"}\n{"text": "j2"}\n')
    (tmp_path / "a.txt").write_text("top")
    (tmp_path / "notes.md").write_text("ignored: not a data file")
    (tmp_path / "empty.txt").write_text("  \n")
    assert list(iter_documents(str(tmp_path))) == ["top", "j1", "j2", "deep"]


def test_clear_errors_for_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.*does not exist.*accepted"):
        iter_documents(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unknown extension '.csv'.*accepted"):
        iter_documents(str(tmp_path / "x.csv"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="holds no .txt, .jsonl or .parquet"):
        iter_documents(str(tmp_path / "empty_dir"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="yielded no documents"):
        list(iter_documents(str(tmp_path / "empty.jsonl")))


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".bz2"])
def test_compressed_files_read_like_plain_ones(tmp_path, suffix):
    import bz2
    import gzip
    import lzma

    opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}[suffix]
    with opener(tmp_path / f"d.jsonl{suffix}", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps({"text": d}) + "\n" for d in make_docs(4)))
    with opener(tmp_path / f"e.txt{suffix}", "wt", encoding="utf-8") as f:
        f.write("one whole document")
    assert list(iter_documents(str(tmp_path / f"d.jsonl{suffix}"))) == make_docs(4)
    assert list(iter_documents(str(tmp_path / f"e.txt{suffix}"))) == ["one whole document"]
    assert list(iter_documents(str(tmp_path))) == make_docs(4) + ["one whole document"]
    (tmp_path / f"x.csv{suffix}").write_bytes(b"")
    with pytest.raises(ValueError, match=f"unknown extension '.csv{suffix}'"):
        iter_documents(str(tmp_path / f"x.csv{suffix}"))


def test_export_writes_a_source_that_gives_the_same_corpus(jsonl, tokenizer, tmp_path, capsys):
    from hypenet.data.__main__ import main

    out = tmp_path / "carried.jsonl.xz"
    assert main(["export", str(out), "--source", str(jsonl)]) == 0
    assert f"wrote {N_DOCS} documents" in capsys.readouterr().out
    assert list(iter_documents(str(out))) == make_docs()
    original = corpus_of(jsonl, tokenizer, tmp_path, heldout_fraction=0.2)
    carried = corpus_of(out, tokenizer, tmp_path, heldout_fraction=0.2)
    assert np.array_equal(original.train_tokens, carried.train_tokens)
    assert [d.tolist() for d in original.heldout_docs] == [d.tolist() for d in carried.heldout_docs]
    assert main(["export", str(tmp_path / "bad.txt"), "--source", str(jsonl)]) == 2
    assert "name the file *.jsonl" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*.tmp*"))


def test_hf_source_without_datasets_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match="pip install datasets"):
        iter_documents("hf:HuggingFaceFW/fineweb-edu:sample-10BT")
    with pytest.raises(ValueError, match="names no dataset"):
        iter_documents("hf:")


@pytest.mark.skipif(not builtin_corpus_available(), reason="built-in corpus not installed")
def test_builtin_corpus_starts_with_books():
    docs = iter_documents("builtin")
    first = [next(docs) for _ in range(3)]
    assert all(len(d) > 100_000 for d in first)  # whole books (or long parts of them) come first
    assert "Emma" in first[0][:200]


def test_builtin_missing_gives_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("HYPENET_BUILTIN_DIR", str(tmp_path / "none"))
    assert not builtin_corpus_available()
    with pytest.raises(FileNotFoundError, match="python -m hypenet.data install"):
        iter_documents("builtin")


def test_split_long_cuts_at_paragraphs():
    text = "\n\n".join(f"paragraph {i} " + "x" * 90 for i in range(100))
    parts = split_long(text, max_chars=1000)
    assert all(len(p) <= 1000 for p in parts) and len(parts) >= 10
    assert "\n\n".join(parts) == text
    assert split_long("short") == ["short"]


def test_html_to_text_drops_page_furniture():
    html = ('<html><head><title>T</title><script>var x;</script></head><body>'
            '<div class="navheader"><a href="a.html">Prev</a></div><h1>Title&amp;more</h1>'
            '<p>First   paragraph.</p><pre>code  line\n  indented</pre><div id="sidebar"><ul><li>menu</li></ul></div>'
            '<div class="footer">Copyright</div></body></html>')
    assert html_to_text(html) == "Title&more\n\nFirst paragraph.\n\ncode  line\n  indented"


# ---------------------------------------------------------------- tokenize_corpus


def test_every_document_is_in_exactly_one_split(jsonl, tokenizer, tmp_path):
    corpus = corpus_of(jsonl, tokenizer, tmp_path, heldout_fraction=0.2)
    eos = tokenizer.eos_token_id
    assert corpus.eos_token_id == eos and corpus.train_tokens.dtype == np.uint16
    markers = {tokenizer.convert_tokens_to_ids(f"doc{i}"): i for i in range(N_DOCS)}
    train_markers = [markers[t] for t in corpus.train_tokens.tolist() if t in markers]
    held_markers = [markers[int(doc[0])] for doc in corpus.heldout_docs]
    assert held_markers and not set(train_markers) & set(held_markers)
    assert sorted(train_markers + held_markers) == list(range(N_DOCS))
    assert train_markers == sorted(train_markers)  # training documents keep their order
    assert all(doc[-1] == eos for doc in corpus.heldout_docs)
    assert np.count_nonzero(corpus.train_tokens == eos) == len(train_markers)
    # contents are exact: the tokens of the document, then EOS
    doc0 = tokenizer(make_docs()[held_markers[0]], add_special_tokens=False)["input_ids"]
    assert corpus.heldout_docs[0].tolist() == doc0 + [eos]


def test_split_is_deterministic_and_seeded(jsonl, tokenizer, tmp_path):
    a = corpus_of(jsonl, tokenizer, tmp_path, heldout_fraction=0.2, cache_dir=tmp_path / "c1")
    b = corpus_of(jsonl, tokenizer, tmp_path, heldout_fraction=0.2, cache_dir=tmp_path / "c2")
    c = corpus_of(jsonl, tokenizer, tmp_path, heldout_fraction=0.2, seed=1, cache_dir=tmp_path / "c3")
    assert np.array_equal(a.train_tokens, b.train_tokens)
    assert [d.tolist() for d in a.heldout_docs] == [d.tolist() for d in b.heldout_docs]
    assert [d[0] for d in a.heldout_docs] != [d[0] for d in c.heldout_docs]


def test_max_tokens_and_min_heldout_docs(jsonl, tokenizer, tmp_path):
    corpus = corpus_of(jsonl, tokenizer, tmp_path, max_tokens=500)
    assert corpus.num_train_tokens() == 500
    forced = corpus_of(jsonl, tokenizer, tmp_path, heldout_fraction=1e-9, min_heldout_docs=3)
    assert len(forced.heldout_docs) == 3
    assert corpus_of(jsonl, tokenizer, tmp_path, heldout_fraction=0.0).heldout_docs == []


def test_long_documents_are_held_out_at_their_own_rate(jsonl, tokenizer, tmp_path):
    lengths = [len(tokenizer(d, add_special_tokens=False)["input_ids"]) + 1 for d in make_docs()]
    corpus = corpus_of(jsonl, tokenizer, tmp_path, heldout_fraction=1e-9, min_heldout_docs=0,
                       long_doc_tokens=200, long_heldout_fraction=0.999999)
    assert sorted(len(d) for d in corpus.heldout_docs) == sorted(n for n in lengths if n >= 200)
    assert len(corpus.long_heldout_docs(200)) == sum(n >= 200 for n in lengths) > 0
    assert corpus.num_train_tokens() == sum(n for n in lengths if n < 200)


def test_cache_hit_returns_equal_arrays_without_reading_the_source(jsonl, tokenizer, tmp_path, monkeypatch):
    first = corpus_of(jsonl, tokenizer, tmp_path, heldout_fraction=0.2)

    def fail(*args, **kwargs):
        raise AssertionError("the cached corpus should have been loaded")

    monkeypatch.setattr("hypenet.data.packing.iter_documents", fail)
    again = corpus_of(jsonl, tokenizer, tmp_path, heldout_fraction=0.2)
    assert np.array_equal(first.train_tokens, again.train_tokens)
    assert [d.tolist() for d in first.heldout_docs] == [d.tolist() for d in again.heldout_docs]
    assert again.tokenizer_name == first.tokenizer_name
    monkeypatch.undo()
    jsonl.write_text('{"text": "doc0 w1 w2"}\n')  # a changed file is tokenised again
    changed = corpus_of(jsonl, tokenizer, tmp_path, heldout_fraction=0.0)
    assert changed.train_tokens.tolist() == tokenizer("doc0 w1 w2")["input_ids"] + [tokenizer.eos_token_id]


def test_empty_source_is_an_error(tmp_path, tokenizer):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="yielded no documents"):
        corpus_of(tmp_path / "empty.jsonl", tokenizer, tmp_path)


def test_describe_and_long_heldout_docs():
    corpus = TokenizedCorpus(np.array([5, 6, 1, 7, 1], dtype=np.uint16),
                             [np.array([2, 3, 1]), np.arange(10)], eos_token_id=1, tokenizer_name="tiny")
    assert [len(d) for d in corpus.long_heldout_docs(5)] == [10]
    info = describe_corpus(corpus)
    assert info["train_tokens"] == 5 and info["train_docs"] == 2
    assert info["heldout_docs"] == 2 and info["heldout_tokens"] == 13 and info["longest_heldout_doc"] == 10


# ---------------------------------------------------------------- PackedChunks

TOKENS = np.arange(1000, dtype=np.uint32)  # token value = position, so a chunk shows where it was cut


def test_chunks_are_exact_slices_covering_an_epoch():
    chunks = PackedChunks(TOKENS, seq_len=16, seed=0)
    assert len(chunks) == 62  # 1000 // 16; the 8-token tail is never used
    batches = list(chunks.batches(batch_size=2, num_steps=31))
    assert all(b.dtype == torch.long and b.shape == (2, 16) for b in batches)
    rows = torch.cat(batches).numpy()
    starts = rows[:, 0]
    assert np.all(starts % 16 == 0) and sorted(starts.tolist()) == list(range(0, 62 * 16, 16))
    assert all(np.array_equal(row, TOKENS[s:s + 16]) for row, s in zip(rows, starts))


def test_batches_are_deterministic_seeded_and_resumable():
    def run(seed, **kw):
        return [b.tolist() for b in PackedChunks(TOKENS, 10, seed).batches(4, **kw)]

    full = run(0, num_steps=20)
    assert full == run(0, num_steps=20)
    assert full != run(1, num_steps=20)
    assert run(0, start_step=7, num_steps=13) == full[7:]
    endless = PackedChunks(TOKENS, 10, 0).batches(4, start_step=3)
    assert [next(endless).tolist() for _ in range(5)] == full[3:8]


def test_repeating_epochs_warns_once_and_reshuffles():
    chunks = PackedChunks(TOKENS, 100, seed=0)  # 10 chunks
    with pytest.warns(UserWarning, match="dataset has 1000 tokens, budget needs 3000: repeating for 3 epochs"):
        rows = torch.cat(list(chunks.batches(5, num_steps=6)))[:, 0].tolist()
    epochs = [rows[0:10], rows[10:20], rows[20:30]]
    assert all(sorted(e) == list(range(0, 1000, 100)) for e in epochs)
    assert epochs[0] != epochs[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second pass over the same chunks does not warn again
        list(chunks.batches(5, num_steps=6))


def test_ranks_split_the_global_batch():
    chunks = PackedChunks(TOKENS, 10, seed=3)
    whole = list(chunks.batches(8, num_steps=5))
    shards = [list(chunks.batches(8, num_steps=5, rank=r, world_size=4)) for r in range(4)]
    for step, batch in enumerate(whole):
        parts = [shards[r][step] for r in range(4)]
        assert all(p.shape == (2, 10) for p in parts)
        assert torch.equal(torch.cat(parts), batch)
    resumed = list(chunks.batches(8, start_step=2, num_steps=3, rank=1, world_size=4))
    assert all(torch.equal(a, b) for a, b in zip(resumed, shards[1][2:]))


@pytest.mark.filterwarnings("ignore:dataset has 1000 tokens")
def test_repeat_spans_write_an_earlier_span_again_in_that_share_of_the_chunks():
    plain = PackedChunks(TOKENS, 250, seed=0)  # 4 chunks; token value = position
    chunks = PackedChunks(TOKENS, 250, seed=0, repeat_spans=0.5)
    rows, originals = torch.cat(list(chunks.batches(4, num_steps=25))), torch.cat(list(plain.batches(4, num_steps=25)))
    changed = 0
    for row, original in zip(rows.numpy(), originals.numpy()):
        differ = np.flatnonzero(row != original)
        if not len(differ):
            continue
        changed += 1
        # one span [target, target + length) holds the tokens of an earlier span [source, source + length) of the
        # first half; every other token is where it was cut
        target = differ[0]
        source = int(np.flatnonzero(original == row[target])[0])
        length = differ[-1] - target + 1
        assert 8 <= length <= 64 and source + length <= 125 and source + length <= target
        assert np.array_equal(row[target:target + length], original[source:source + length])
    assert 35 <= changed <= 65  # of 100 served; and the same ones, spans and all, in every run and from any step
    assert rows.tolist() == torch.cat(list(chunks.batches(4, num_steps=25))).tolist()
    assert torch.equal(torch.cat(list(chunks.batches(4, start_step=10, num_steps=15))), rows[40:])
    assert torch.equal(torch.cat([torch.cat(list(chunks.batches(4, num_steps=25, rank=r, world_size=2)))
                                  for r in range(2)]).sort(dim=0).values, rows.sort(dim=0).values)
    every = torch.cat(list(PackedChunks(TOKENS, 250, seed=0, repeat_spans=1.0).batches(4, num_steps=1)))
    assert not any(torch.equal(a, b) for a, b in zip(every, originals[:4]))
    short = PackedChunks(TOKENS, 16, seed=0, repeat_spans=1.0)  # under 4 x 8 tokens: nothing to repeat
    assert torch.equal(next(short.batches(4)), next(PackedChunks(TOKENS, 16, seed=0).batches(4)))
    with pytest.raises(ValueError, match=r"repeat_spans is a share of the chunks served, in \[0, 1\]; got 2"):
        PackedChunks(TOKENS, 250, repeat_spans=2)


def digit_ids(text: str) -> list[int]:
    """A tokenizer of numbers' text for the tests: each digit d is token 10_000 + d, the leading space dropped."""
    return [10_000 + int(c) for c in text.strip()]


def test_repeat_number_plants_a_number_and_copies_it_with_the_text_before_it():
    chunk = np.arange(1000, 1400, dtype=np.uint32)
    for seed in range(20):
        out = repeat_number(chunk, np.random.default_rng(seed), digit_ids)
        assert out.dtype == chunk.dtype and len(out) == len(chunk)
        digits = np.flatnonzero(out >= 10_000)
        n = len(digits) // 2
        assert 5 <= n <= 10 and len(digits) == 2 * n and out[digits[0]] != 10_000  # 5-10 digits, not led by 0
        first, second = digits[:n], digits[n:]
        assert np.array_equal(np.diff(first), np.ones(n - 1)) and np.array_equal(np.diff(second), np.ones(n - 1))
        assert first[-1] < len(chunk) // 2  # planted in the first half
        assert np.array_equal(out[first], out[second])
        lead = 0  # how many tokens before the copy equal those before the number (the chunk's tokens are distinct)
        while lead < first[0] and out[second[0] - lead - 1] == out[first[0] - lead - 1]:
            lead += 1
        assert 4 <= lead <= 16  # the text before the number came with it
        # every token but the number and the copy is where it was cut
        changed = np.flatnonzero(out != chunk)
        assert set(changed) <= set(first) | set(range(second[0] - lead, second[-1] + 1))
    again = repeat_number(chunk, np.random.default_rng(3), digit_ids)
    assert np.array_equal(again, repeat_number(chunk, np.random.default_rng(3), digit_ids))
    short = np.arange(35, dtype=np.uint32)  # under 4 x (4 + 5) tokens: left as it is
    assert repeat_number(short, np.random.default_rng(0), digit_ids, lead=(4, 4), digits=(5, 5)) is short


def digit_runs(row: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of digit tokens (digit_ids') in a row."""
    is_digit = np.concatenate([[False], row >= 10_000, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(is_digit))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def test_repeat_number_decoys_are_look_alikes_before_the_copy():
    chunk = np.arange(1000, 1600, dtype=np.uint32)
    for seed in range(20):
        plain = repeat_number(chunk, np.random.default_rng(seed), digit_ids)
        out = repeat_number(chunk, np.random.default_rng(seed), digit_ids, decoys=4)
        runs = digit_runs(plain)
        (first, end), (second, _) = runs  # the number and its copy, as without decoys
        n = end - first
        decoys = [run for run in digit_runs(out) if run not in runs]
        assert all(out[a:b].tolist() == plain[a:b].tolist() for a, b in runs)  # the same number at the same places
        assert 1 <= len(decoys) <= 4 and len(digit_runs(out)) == 2 + len(decoys)  # apart from each other and them
        lead = 0
        while out[second - lead - 1] == out[first - lead - 1]:
            lead += 1
        assert lead >= 4  # the text copied with the number is still there, before both
        for a, b in decoys:
            assert b - a == n and b <= second and out[a] != 10_000  # as many digits, before the copy, not led by 0
            assert out[a:b].tolist() != out[first:end].tolist()  # another number
            assert b < first - lead or a > end  # not over or against the number or the text before it
        changed = set(np.flatnonzero(out != plain).tolist())
        assert changed <= {i for a, b in decoys for i in range(a, b)}  # decoys only: nothing else moved
    placed = sum(len(digit_runs(repeat_number(chunk, np.random.default_rng(s), digit_ids, decoys=4))) - 2
                 for s in range(20))
    assert placed >= 70  # nearly all 80 find room in 600 tokens
    assert np.array_equal(repeat_number(chunk, np.random.default_rng(5), digit_ids, decoys=3),
                          repeat_number(chunk, np.random.default_rng(5), digit_ids, decoys=3))


def test_repeat_number_says_where_each_number_went():
    chunk = np.arange(1000, 1600, dtype=np.uint32)
    for seed in range(20):
        placed = []
        out = repeat_number(chunk, np.random.default_rng(seed), digit_ids, decoys=4, placed=placed)
        assert np.array_equal(out, repeat_number(chunk, np.random.default_rng(seed), digit_ids, decoys=4))
        kinds = [kind for kind, _, _ in placed]
        assert kinds[:2] == ["number", "copy"] and set(kinds[2:]) <= {"decoy"}
        assert sorted((a, b) for _, a, b in placed) == digit_runs(out)  # every number written, and nothing else
        (_, a, b), (_, c, d) = placed[:2]
        assert out[a:b].tolist() == out[c:d].tolist() and b <= len(chunk) // 2 and b < c  # the copy after it
    short = np.arange(35, dtype=np.uint32)
    placed = []
    assert repeat_number(short, np.random.default_rng(0), digit_ids, placed=placed) is short and placed == []


@pytest.mark.filterwarnings("ignore:dataset has 1000 tokens")
def test_served_says_where_the_numbers_went():
    chunks = PackedChunks(TOKENS, 250, seed=0, repeat_spans=0.5, repeat_numbers=0.5, number_ids=digit_ids,
                          number_decoys=2)
    seen = 0
    for item in range(40):
        placed = []
        row = chunks.served(item, placed=placed)
        assert np.array_equal(row, chunks.served(item))
        assert sorted((a, b) for _, a, b in placed) == digit_runs(row)
        seen += bool(placed)
    assert seen > 0  # some of the 40 items got a number (a share 0.25 of them)


@pytest.mark.filterwarnings("ignore:dataset has 1000 tokens")
def test_number_decoys_go_with_repeat_numbers():
    numbers = PackedChunks(TOKENS, 250, seed=0, repeat_spans=0.5, repeat_numbers=0.5, number_ids=digit_ids)
    decoyed = PackedChunks(TOKENS, 250, seed=0, repeat_spans=0.5, repeat_numbers=0.5, number_ids=digit_ids,
                           number_decoys=2)
    rows, with_decoys = (torch.cat(list(c.batches(4, num_steps=25))) for c in (numbers, decoyed))
    planted = (rows >= 10_000).any(dim=1)
    assert torch.equal(with_decoys[~planted], rows[~planted])  # rows without a number are as they were
    assert ((with_decoys[planted] >= 10_000).sum() > (rows[planted] >= 10_000).sum())
    assert torch.equal(torch.cat(list(decoyed.batches(4, start_step=10, num_steps=15))), with_decoys[40:])
    with pytest.raises(ValueError, match="number_decoys go beside the numbers that repeat_numbers plants"):
        PackedChunks(TOKENS, 250, repeat_spans=0.5, number_decoys=2)
    with pytest.raises(ValueError, match=r"number_decoys is a count of made-up numbers, 0 or more; got -1"):
        PackedChunks(TOKENS, 250, repeat_spans=0.5, repeat_numbers=0.5, number_ids=digit_ids, number_decoys=-1)


@pytest.mark.filterwarnings("ignore:dataset has 1000 tokens")
def test_repeat_numbers_replace_that_share_of_the_repeated_spans():
    spans = PackedChunks(TOKENS, 250, seed=0, repeat_spans=0.5)
    numbers = PackedChunks(TOKENS, 250, seed=0, repeat_spans=0.5, repeat_numbers=0.5, number_ids=digit_ids)
    plain = torch.cat(list(PackedChunks(TOKENS, 250, seed=0).batches(4, num_steps=25)))
    with_spans = torch.cat(list(spans.batches(4, num_steps=25)))
    rows = torch.cat(list(numbers.batches(4, num_steps=25)))
    planted = (rows >= 10_000).any(dim=1)
    assert 10 <= int(planted.sum()) <= 40  # about a quarter of the 100 rows
    changed = (with_spans != plain).any(dim=1)
    assert not (planted & ~changed).any()  # numbers only in the rows that get a repeated span
    assert torch.equal(rows[~planted], with_spans[~planted])  # the others keep their span
    assert torch.equal(torch.cat(list(numbers.batches(4, start_step=10, num_steps=15))), rows[40:])  # resumable
    with pytest.raises(ValueError, match="repeat_numbers and repeat_uuids need number_ids"):
        PackedChunks(TOKENS, 250, repeat_spans=0.5, repeat_numbers=0.5)
    with pytest.raises(ValueError, match=r"repeat_numbers is a share of the chunks with a repeated span, in \[0, 1\]"):
        PackedChunks(TOKENS, 250, repeat_spans=0.5, repeat_numbers=1.5, number_ids=digit_ids)


def value_ids(text: str) -> list[int]:
    """digit_ids for numbers; a UUID's characters (with its dashes) each 20_000 + its code point, the space dropped."""
    return [20_000 + ord(c) for c in text.strip()] if "-" in text else digit_ids(text)


UUID_FORM = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_made_up_uuid_is_a_version_4_uuid_after_a_space():
    texts = [made_up_uuid(np.random.default_rng(seed)) for seed in range(50)]
    assert all(t[0] == " " and UUID_FORM.fullmatch(t[1:]) for t in texts)
    assert len(set(texts)) == 50 and made_up_uuid(np.random.default_rng(7)) == texts[7]


def test_repeat_number_plants_a_uuid_with_value_uuid():
    chunk, decoys = np.arange(1000, 1600, dtype=np.uint32), 0
    for seed in range(20):
        placed = []
        out = repeat_number(chunk, np.random.default_rng(seed), value_ids, decoys=3, placed=placed, value="uuid")
        runs = sorted((a, b) for _, a, b in placed)
        assert (out >= 10_000).sum() == sum(b - a for a, b in runs)  # nothing else written as a value
        texts = ["".join(chr(int(t) - 20_000) for t in out[a:b]) for _, a, b in placed]
        assert all(UUID_FORM.fullmatch(t) for t in texts)  # 36 characters, the value and every decoy a UUID
        (_, a, b), (_, c, d) = placed[:2]
        assert texts[0] == texts[1] and b <= len(chunk) // 2 and b < c  # planted in the first half, copied after it
        assert len(set(texts)) == len(texts) - 1  # the decoys: other UUIDs (before the copy, where there is room)
        decoys += len(placed) - 2
        lead = 0
        while out[c - lead - 1] == out[a - lead - 1]:
            lead += 1
        assert 4 <= lead <= 16  # the text before the UUID came with it
    assert decoys >= 45  # most of the 60 find room (36 tokens each in 600; 54 with these seeds)
    numbers = repeat_number(chunk, np.random.default_rng(3), value_ids)
    assert np.array_equal(numbers, repeat_number(chunk, np.random.default_rng(3), digit_ids))  # the default: numbers
    with pytest.raises(ValueError, match=r"value is what a made-up value is, one of number, uuid; got 'hex'"):
        repeat_number(chunk, np.random.default_rng(0), value_ids, value="hex")


@pytest.mark.filterwarnings("ignore:dataset has 1000 tokens")
def test_repeat_uuids_take_their_share_from_the_spans_and_keep_the_numbers():
    numbers = PackedChunks(TOKENS, 250, seed=0, repeat_spans=1.0, repeat_numbers=0.5, number_ids=value_ids)
    both = PackedChunks(TOKENS, 250, seed=0, repeat_spans=1.0, repeat_numbers=0.5, number_ids=value_ids,
                        repeat_uuids=0.25)
    rows, with_uuids = (torch.cat(list(c.batches(4, num_steps=25))) for c in (numbers, both))
    has_number = ((rows >= 10_000) & (rows < 20_000)).any(dim=1)
    has_uuid = (with_uuids >= 20_000).any(dim=1)
    assert 10 <= int(has_uuid.sum()) <= 40  # about a quarter of the 100 rows
    assert not (has_uuid & has_number).any()  # taken from the spans' rows, not the numbers'
    assert torch.equal(with_uuids[~has_uuid], rows[~has_uuid])  # every other row as it was, numbers and spans
    assert torch.equal(torch.cat(list(both.batches(4, start_step=10, num_steps=15))), with_uuids[40:])  # resumable
    uuids_alone = PackedChunks(TOKENS, 250, seed=0, repeat_spans=1.0, number_ids=value_ids, repeat_uuids=0.25,
                               number_decoys=1)
    alone = torch.cat(list(uuids_alone.batches(4, num_steps=25)))
    assert not ((alone >= 10_000) & (alone < 20_000)).any() and (alone >= 20_000).any(dim=1).sum() >= 10
    with pytest.raises(ValueError, match=r"repeat_uuids is a share of the chunks with a repeated span, in "
                                         r"\[0, 1 - repeat_numbers\] = \[0, 0.5\]; got 0.75"):
        PackedChunks(TOKENS, 250, repeat_spans=1.0, repeat_numbers=0.5, number_ids=value_ids, repeat_uuids=0.75)
    with pytest.raises(ValueError, match="repeat_numbers and repeat_uuids need number_ids"):
        PackedChunks(TOKENS, 250, repeat_spans=1.0, repeat_uuids=0.5)
    PackedChunks(TOKENS, 250, repeat_spans=1.0, repeat_numbers=0.7, number_ids=value_ids, repeat_uuids=0.3)  # sum 1


def test_chunk_errors():
    with pytest.raises(ValueError, match="multiple of world_size"):
        next(PackedChunks(TOKENS, 10).batches(6, world_size=4))
    with pytest.raises(ValueError, match="fewer than one chunk"):
        next(PackedChunks(TOKENS[:5], 10).batches(1))


def test_tokenized_corpus_feeds_packed_chunks(jsonl, tokenizer, tmp_path):
    corpus = corpus_of(jsonl, tokenizer, tmp_path)
    chunks = PackedChunks(corpus.train_tokens, seq_len=32, seed=0)
    batch = next(chunks.batches(4))
    assert batch.shape == (4, 32) and int(batch.max()) < len(tokenizer)


# ---------------------------------------------------------------- unwrapped paragraphs (training documents only)

WRAPPED = (
    "Title\n\n"
    "It was a dislike so little just, every imputed fault\nwas so magnified by fancy,\nthat she never saw her.\n\n"
    "Code, indented:\n    x = 1\n    y = 2\n\n"
    "- a list item\n- another one\n\n"
    "A second paragraph of\nwrapped prose.  \n  \n"
    "Last one\nends here."
)


def test_unwrap_joins_wrapped_prose_and_keeps_everything_else():
    from hypenet.data.unwrap import unwrap_paragraphs

    joined = unwrap_paragraphs(WRAPPED, 1.0, random.Random(0))
    assert joined == (
        "Title\n\n"
        "It was a dislike so little just, every imputed fault was so magnified by fancy, that she never saw her.\n\n"
        "Code, indented:\n    x = 1\n    y = 2\n\n"
        "- a list item\n- another one\n\n"
        "A second paragraph of wrapped prose.  \n  \n"
        "Last one ends here."
    )
    assert unwrap_paragraphs(WRAPPED, 0.0, random.Random(0)) == WRAPPED
    # one draw per wrapped-prose paragraph, in order: the same generator state gives the same choice
    some = [unwrap_paragraphs(WRAPPED, 0.5, random.Random(seed)) for seed in range(40)]
    assert some == [unwrap_paragraphs(WRAPPED, 0.5, random.Random(seed)) for seed in range(40)]
    assert {WRAPPED, joined} < set(some)  # none, all and mixes of the three paragraphs occur
    assert all(text.replace("\n", " ").split() == WRAPPED.replace("\n", " ").split() for text in some)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\], got -0.1"):
        unwrap_paragraphs(WRAPPED, -0.1, random.Random(0))


def test_wrapped_chars_counts_the_paragraphs_unwrap_can_join():
    from hypenet.data.unwrap import wrapped_chars

    joinable = ["It was a dislike so little just, every imputed fault\nwas so magnified by fancy,\nthat she never saw "
                "her.", "A second paragraph of\nwrapped prose.  ", "Last one\nends here."]
    assert all(p in WRAPPED for p in joinable)
    assert wrapped_chars(WRAPPED) == sum(map(len, joinable))
    assert wrapped_chars("one line only") == wrapped_chars("") == wrapped_chars("- a\n- b") == 0


def test_unwrapped_training_documents_leave_the_heldout_split_as_read(tmp_path, tokenizer, monkeypatch):
    words = [[f"doc{i}"] + [WORDS[(i + j) % 50] for j in range(6 + 3 * i)] for i in range(N_DOCS)]
    docs = ["\n".join(" ".join(w[k:k + 4]) for k in range(0, len(w), 4)) for w in words]  # 4 words a line
    path = tmp_path / "wrapped.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    newline_tokenizer = PreTrainedTokenizerFast(tokenizer_object=_newline_aware(tokenizer), unk_token="<unk>",
                                                eos_token="<eos>")
    with pytest.warns(UserWarning, match=r"100% of the text read from .*wrapped.jsonl is hard-wrapped prose .* "
                                         r"consider `--set data.unwrap_paragraphs=0.5`"):
        plain = corpus_of(path, newline_tokenizer, tmp_path, heldout_fraction=0.2, min_heldout_docs=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no hint when the option is on, nor for text in long lines
        unwrapped = corpus_of(path, newline_tokenizer, tmp_path, heldout_fraction=0.2, min_heldout_docs=12,
                              unwrap_paragraphs=1.0)
        (tmp_path / "lines.jsonl").write_text("".join(json.dumps({"text": d.replace("\n", " ")}) + "\n" for d in docs))
        corpus_of(tmp_path / "lines.jsonl", newline_tokenizer, tmp_path, heldout_fraction=0.2, min_heldout_docs=12)
    newline = newline_tokenizer.convert_tokens_to_ids("\n")
    assert [d.tolist() for d in unwrapped.heldout_docs] == [d.tolist() for d in plain.heldout_docs]
    assert all(newline in d.tolist() for d in plain.heldout_docs)  # held out as read, line breaks and all
    assert newline in plain.train_tokens.tolist() and newline not in unwrapped.train_tokens.tolist()
    assert np.array_equal(plain.train_tokens[plain.train_tokens != newline], unwrapped.train_tokens)
    with pytest.raises(ValueError, match=r"unwrap_paragraphs must be in \[0, 1\], got 2"):
        corpus_of(path, newline_tokenizer, tmp_path, unwrap_paragraphs=2)
    # evaluation reads held-out text as it is: the hint, a training setting, is not given there
    from hypenet.data import packing
    from hypenet.eval.documents import heldout_documents, heldout_token_docs

    monkeypatch.setattr(packing, "default_cache_dir", lambda: tmp_path / "eval_cache")  # tokenised afresh
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert heldout_token_docs(newline_tokenizer, 2, 64, str(path), 0.2, progress=False)
        assert heldout_documents(newline_tokenizer, str(path), 0.2, seed=1, progress=False)


def _newline_aware(tokenizer) -> Tokenizer:
    """The test's word-level tokenizer with "\\n" as a token of its own (it splits on spaces only)."""
    vocab = dict(tokenizer.get_vocab())
    vocab["\n"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^ \n]+|\n"), behavior="removed", invert=True)
    return backend


def test_documents_with_their_text_under_another_field_name_the_command_that_rewrites_them(tmp_path):
    source = tmp_path / "docs.jsonl"
    source.write_text(json.dumps({"body": "a document"}) + "\n")
    with pytest.raises(ValueError) as error:
        list(iter_documents(str(source)))
    assert str(error.value) == (
        f"{source}:1 has no field 'text' (found ['body']); pass text_field=... (hypenet convert: --set "
        "data.text_field=NAME; for the other commands, rewrite them with the text under 'text': "
        "`python -m hypenet.data export OUT.jsonl --source SOURCE --text-field NAME`)")
    assert list(iter_documents(str(source), text_field="body")) == ["a document"]
