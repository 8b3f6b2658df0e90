"""User-facing errors: one line naming the file, field or value and what was expected."""

from __future__ import annotations


class EigenarchError(Exception):
    """An error caused by user input; the CLI prints its message on one line and exits 2."""
