"""Hard-wrapped paragraphs joined into one line each: a training-data option against a formatting habit.

Most of the built-in corpus is hard-wrapped at ~70 characters (the Gutenberg books, the reST manuals). Distilled
on it, every student so far breaks the line there: asked for a NIAH needle hidden in such text, 74-100% of
its answers start with a newline where the teacher's almost never do (results/gpu_convert/README.md, "Tenth
lease"). `unwrap_paragraphs` joins the lines of a share of the paragraphs of a training document, so that the
student also sees long lines inside wrapped text and learns from the teacher what follows them. Held-out documents
(perplexity, NIAH haystacks, the logit-scaling search) keep their source's format (`tokenize_corpus`). On the H200,
with half of the paragraphs joined, none of a student's answers inside the teacher's window started with a newline
and NIAH-Single-2 rose from 2% to 24% over 4K-64K ("Eleventh lease").
"""

from __future__ import annotations

import random
import re

__all__ = ["unwrap_paragraphs", "wrapped_chars"]

# a blank line (spaces allowed) and any whitespace after it: what separates paragraphs; kept as it is
_PARAGRAPH_BREAK = re.compile(r"(\n[ \t]*\n\s*)")
# a line that starts with one of these is a list item, table row, heading underline, quotation or directive
_BLOCK_MARKERS = tuple("-*+|=#>.:")


def _is_wrapped_prose(lines: list[str]) -> bool:
    """Two or more lines, none after the first indented or starting a list, table, heading or quotation (code,
    verse and tables keep their lines)."""
    return len(lines) > 1 and all(line.strip() and not line[0].isspace() and not line.startswith(_BLOCK_MARKERS)
                                  for line in lines[1:])


def unwrap_paragraphs(text: str, fraction: float, rng: random.Random) -> str:
    """`text` with the line breaks inside some of its wrapped-prose paragraphs replaced by spaces.

    Each paragraph (text between blank lines) of two or more lines, none of them after the first indented or
    starting with a list / table / heading / quotation marker, is joined with probability `fraction` (one draw of
    `rng` per such paragraph, in order). Paragraph breaks and everything else are kept exactly."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if fraction == 0:
        return text
    parts = _PARAGRAPH_BREAK.split(text)  # paragraph, break, paragraph, break, ..., paragraph
    for i in range(0, len(parts), 2):
        lines = parts[i].split("\n")
        if _is_wrapped_prose(lines) and rng.random() < fraction:
            parts[i] = " ".join([line.rstrip() for line in lines[:-1]] + [lines[-1]])  # none indented after the first
    return "".join(parts)


def wrapped_chars(text: str) -> int:
    """How many of `text`'s characters lie in wrapped-prose paragraphs, the ones `unwrap_paragraphs` can join."""
    return sum(len(part) for part in _PARAGRAPH_BREAK.split(text)[::2] if _is_wrapped_prose(part.split("\n")))
