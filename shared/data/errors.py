"""The suite's bad-input error, in a module that imports nothing heavy (the CLI catches it before torch loads)."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad input data; the message names the file (and key or row) at fault."""
