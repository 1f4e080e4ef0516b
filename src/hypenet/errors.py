"""Errors that name a bad input. The `hypenet` command prints their message alone, with no traceback."""

from __future__ import annotations


class MissingInputError(FileNotFoundError):
    """A path the user named, or a package they must install, is not there.

    A subclass of FileNotFoundError, so that library callers catching that still do; the CLI catches only this, so
    a missing file that is hypenet's own bug keeps its traceback."""


class InvalidInputError(ValueError):
    """A value the user gave that cannot work (a NIAH length shorter than its prompt's template, ...). A subclass of
    ValueError for library callers; the CLI prints its message alone, as for MissingInputError."""
