"""What every ``radloop`` verb module shares: the answer on stdout and common flags."""

from __future__ import annotations

import argparse
import sys

__all__ = ["echo", "outside_root_flag", "renamed_flag", "require", "sampling_flags"]


def echo(text: str = "") -> None:
    """The CLI's answer on stdout (library code logs instead)."""
    sys.stdout.write(text + "\n")


def outside_root_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-outside-root", dest="allow_outside_root", action="store_true",
                   help="let the annotation's image paths leave the image root (absolute paths, '..', symlinks "
                        "out); only for files you trust")


class _OldName(argparse.Action):
    """A flag's old name: stores into the new name's destination and says on stderr which name to use."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        sys.stderr.write(f"radloop: warning: {option_string} is deprecated and goes in the next release; "
                         f"use {self.new}\n")
        setattr(namespace, self.dest, values)


def renamed_flag(p: argparse.ArgumentParser, new: str, old: str, **kwargs: object) -> None:
    """``new`` (diffusers' name) with ``old`` still accepted for one release, hidden from ``--help``."""
    dest = new.lstrip("-").replace("-", "_")
    p.add_argument(new, dest=dest, **kwargs)
    p.add_argument(old, dest=dest, action=_OldName, new=new, help=argparse.SUPPRESS,
                   **{k: v for k, v in kwargs.items() if k == "type"})


def require(args: argparse.Namespace, flag: str) -> object:
    """The value of a required renamed flag (argparse cannot require one of two names); a one-line error else."""
    value = getattr(args, flag.lstrip("-").replace("-", "_"))
    if value is None:
        raise ValueError(f"{flag} is required")
    return value


def sampling_flags(p: argparse.ArgumentParser) -> None:
    """Steps and guidance under diffusers' names (the old --steps / --guidance still work for one release)."""
    renamed_flag(p, "--num-inference-steps", "--steps", type=int, help="sampler steps (default: the pipeline's)")
    renamed_flag(p, "--guidance-scale", "--guidance", type=float,
                 help="classifier-free guidance scale, 1 = off (default: the pipeline's)")
