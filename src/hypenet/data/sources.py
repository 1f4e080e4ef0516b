"""Where documents come from: the built-in corpus, local files and folders, or a Hugging Face dataset."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import MissingInputError
from .builtin import builtin_corpus_available, builtin_files, iter_builtin_documents

__all__ = ["ACCEPTED", "builtin_corpus_available", "export_documents", "iter_documents", "source_files"]

ACCEPTED = (
    '"builtin", a .txt file (one document), a .jsonl file (one JSON object per line), a .parquet file, '
    'a .txt/.jsonl file compressed as .gz, .xz or .bz2, a folder holding such files, or "hf:NAME[:CONFIG][:SPLIT]"'
)
# Compressed text files are read through these openers (text mode); the format is the suffix before them.
COMPRESSION = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


def _open_text(path: Path, mode: str = "rt"):
    """A text file, through its compression's opener when its suffix names one."""
    return COMPRESSION.get(path.suffix, open)(path, mode, encoding="utf-8", errors="replace")


def file_format(path: Path) -> str:
    """The reader's key of a file: its suffix, or the one before a compression suffix (a.jsonl.xz -> .jsonl)."""
    path = Path(path)
    if path.suffix in COMPRESSION:
        inner = Path(path.stem).suffix
        return inner if inner in (".txt", ".jsonl") else path.suffix
    return path.suffix


TEXT_FIELD_HINT = ("; pass text_field=... (hypenet convert: --set data.text_field=NAME; for the other commands, "
                   "rewrite them with the text under 'text': "
                   "`python -m hypenet.data export OUT.jsonl --source SOURCE --text-field NAME`)")


def _read_txt(path: Path, text_field: str) -> Iterator[str]:
    with _open_text(path) as f:
        yield f.read()


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with _open_text(path) as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not valid JSON ({error.msg})") from error
            if not isinstance(record, dict) or text_field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(f"{path}:{number} has no field {text_field!r} (found {keys}){TEXT_FIELD_HINT}")
            yield record[text_field]


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from error
    table = pq.ParquetFile(path)
    if text_field not in table.schema_arrow.names:
        columns = table.schema_arrow.names
        raise ValueError(f"{path} has no column {text_field!r} (columns: {columns}){TEXT_FIELD_HINT}")
    for batch in table.iter_batches(columns=[text_field], batch_size=1024):
        yield from batch.column(0).to_pylist()


READERS: dict[str, Callable[[Path, str], Iterator[str]]] = {
    ".txt": _read_txt, ".jsonl": _read_jsonl, ".parquet": _read_parquet,
}


def source_files(source: str) -> list[Path]:
    """The files a local or built-in source reads, in reading order ([] for hf: sources)."""
    source = str(source)
    if source == "builtin":
        return builtin_files()
    if source.startswith("hf:"):
        return []
    path = Path(source).expanduser()
    if not path.exists():
        raise MissingInputError(f"data source {source!r} does not exist; accepted: {ACCEPTED}")
    if path.is_file():
        if file_format(path) not in READERS:
            raise ValueError(f"data source {source!r} has an unknown extension {''.join(path.suffixes)!r}; "
                             f"accepted: {ACCEPTED}")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and file_format(p) in READERS)
    if not files:
        raise ValueError(f"folder {source!r} holds no .txt, .jsonl or .parquet files (plain or compressed); "
                         f"accepted: {ACCEPTED}")
    return files


def _hf_documents(spec: str, text_field: str) -> Iterator[str]:
    name, config, split = (spec.split(":") + ["", ""])[:3]
    if not name:
        raise ValueError(f"'hf:{spec}' names no dataset; write hf:NAME[:CONFIG][:SPLIT], "
                         f"e.g. hf:HuggingFaceFW/fineweb-edu")
    try:
        import datasets
    except ImportError as error:
        raise ImportError(f"the source 'hf:{spec}' needs the datasets package: pip install datasets") from error
    rows = datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
    return (_field(row, text_field, f"'hf:{spec}' rows") for row in rows)


def _field(row: dict, text_field: str, what: str) -> str:
    if text_field not in row:
        raise ValueError(f"{what} have no field {text_field!r} (found {sorted(row)}){TEXT_FIELD_HINT}")
    return row[text_field]


def iter_documents(source: str, *, text_field: str = "text") -> Iterator[str]:
    """The documents of `source`, one string each, in a fixed order.

    source: "builtin" (the offline corpus of hypenet.data.builtin); a .txt file (one document per file); a .jsonl file
    (one JSON object per line, text in `text_field`); either of those compressed (.gz, .xz, .bz2, e.g. corpus.jsonl.xz);
    a .parquet file (column `text_field`); a folder holding any of
    these (read recursively in sorted path order); or "hf:NAME[:CONFIG][:SPLIT]" for a Hugging Face dataset streamed
    with `datasets` (split defaults to train). Empty and whitespace-only documents are skipped.

    A missing path raises FileNotFoundError, an unknown extension or a folder without readable files ValueError,
    at once; a source that turns out to hold no documents raises ValueError when the iteration ends.
    """
    source = str(source)
    if source == "builtin":
        documents = iter_builtin_documents()
    elif source.startswith("hf:"):
        documents = _hf_documents(source[3:], text_field)
    else:
        documents = (doc for path in source_files(source) for doc in READERS[file_format(path)](path, text_field))
    return _non_empty(source, documents)


def _non_empty(source: str, documents: Iterator[str]) -> Iterator[str]:
    count = 0
    for doc in documents:
        if isinstance(doc, str) and doc.strip():
            count += 1
            yield doc
    if count == 0:
        raise ValueError(f"source {source!r} yielded no documents")


def export_documents(source: str, path: str | Path, *, text_field: str = "text") -> int:
    """Write the documents of `source`, in order, to a .jsonl file (compressed when `path` ends in .gz/.xz/.bz2).

    The file is a source in its own right that yields the same documents in the same order, so HALO's held-out split
    is the same; it carries a corpus to a machine without the packages or network (written to a temporary name,
    then renamed). Returns the number of documents.
    """
    path = Path(path)
    if file_format(path) != ".jsonl":
        raise ValueError(f"export writes JSON lines: name the file *.jsonl, *.jsonl.gz, *.jsonl.xz or *.jsonl.bz2, "
                         f"not {path.name!r}")
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")  # same compression suffix, so the same opener
    count = 0
    try:
        with _open_text(tmp, "wt") as f:
            for doc in iter_documents(source, text_field=text_field):
                f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count
