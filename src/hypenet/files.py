"""Record files that may lie compressed. results/ keeps its JSON-lines files (per-sample answers, per-step losses) as
`NAME.jsonl.xz` (`xz -9`), about an eighth of their size, so that the working tree a GPU lease carries stays small.
The tools that read such records (`hypenet merge-evals`, scripts/niah_*.py, scripts/compare_losses.py) take the name
without `.xz` and read whichever of the two is there."""

from __future__ import annotations

import lzma
from pathlib import Path

PACKED = ".xz"


def find(path: str | Path) -> Path | None:
    """`path` when it is a file, else `path`.xz when that is one, else None."""
    path = Path(path)
    if path.is_file():
        return path
    packed = path.with_name(path.name + PACKED)
    return packed if packed.is_file() else None


def read_text(path: str | Path) -> str:
    """The text of `path`, or of `path`.xz decompressed when only that is there (FileNotFoundError naming both when
    neither is)."""
    found = find(path)
    if found is None:
        raise FileNotFoundError(f"no {path} (nor {Path(path).name}{PACKED} beside it)")
    if found.name.endswith(PACKED):
        with lzma.open(found, "rt", encoding="utf-8") as f:
            return f.read()
    return found.read_text(encoding="utf-8")
