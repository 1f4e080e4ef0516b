"""Token counts as the command line writes them ('4K,32K,1M': K = 1024 tokens, M = 1024K) and as reports and figures
label them ('32K'), byte sizes as reports write them ('5.2 KiB'), and the argparse types of numbers that must be
positive."""

from __future__ import annotations

import argparse

SCALE = {"K": 1024, "M": 1024**2}
BYTE_UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def tokens(text: str) -> list[int]:
    """'32K,128K,1M' -> [32768, 131072, 1048576]; plain numbers as they are; '' -> []."""
    values = []
    for item in (x.strip().upper() for x in text.split(",") if x.strip()):
        values.append(int(float(item[:-1]) * SCALE[item[-1]]) if item[-1] in SCALE else int(float(item)))
    return values


def length_label(tokens: int) -> str:
    """32768 -> '32K' (whole multiples of 1024), else the number: 1000 -> '1000'."""
    return f"{tokens // 1024}K" if tokens and tokens % 1024 == 0 else str(tokens)


def duration_label(seconds: float) -> str:
    """A time as estimates and plans say it: `<1 s`, `42 s`, `12 min`, `3.5 h`."""
    if 0 < seconds < 0.5:  # (a smoke run's stages) not "0 s"
        return "<1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def byte_size(value: int) -> str:
    """5324 -> '5.2 KiB' (binary units, one decimal)."""
    for unit, size in BYTE_UNITS:
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"


def checked(convert, accept, expected: str):
    """An argparse type: `convert(text)` if it works and `accept`s the value; else argparse's usage error saying
    `expected` (e.g. checked(int, lambda n: n >= 1, "a positive whole number"))."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):  # NaN is accepted by no comparison
            raise argparse.ArgumentTypeError(f"{expected}; got {text!r}")
        return value
    return parse


# positive token counts as `tokens` reads them ('' -> [], for options where that means none)
token_list = checked(tokens, lambda ns: all(n >= 1 for n in ns), "comma list of positive counts (K = 1024, M = 1024K), "
                     "e.g. 4K,64K")
positive_int = checked(int, lambda n: n >= 1, "a positive whole number")  # a count, a batch, a length
non_negative_int = checked(int, lambda n: n >= 0, "a whole number >= 0")  # steps that may be none
non_negative_float = checked(float, lambda x: x >= 0, "a number >= 0")  # a temperature
positive_float = checked(float, lambda x: x > 0, "a number > 0")  # seconds
