"""Token counts as the command line writes them: '4K,32K,1M' (K = 1024 tokens, M = 1024K)."""

from __future__ import annotations

SCALE = {"K": 1024, "M": 1024**2}


def tokens(text: str) -> list[int]:
    """'32K,128K,1M' -> [32768, 131072, 1048576]; plain numbers as they are; '' -> []."""
    values = []
    for item in (x.strip().upper() for x in text.split(",") if x.strip()):
        values.append(int(float(item[:-1]) * SCALE[item[-1]]) if item[-1] in SCALE else int(float(item)))
    return values
