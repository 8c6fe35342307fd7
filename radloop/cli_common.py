"""What every ``radloop`` verb module shares: the answer on stdout and common flags."""

from __future__ import annotations

import argparse
import sys

__all__ = ["echo", "outside_root_flag"]


def echo(text: str = "") -> None:
    """The CLI's answer on stdout (library code logs instead)."""
    sys.stdout.write(text + "\n")


def outside_root_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-outside-root", dest="allow_outside_root", action="store_true",
                   help="let the annotation's image paths leave the image root (absolute paths, '..', symlinks "
                        "out); only for files you trust")
