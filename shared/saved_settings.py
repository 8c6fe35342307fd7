"""Settings saved beside a model's weights, so what it needs at inference travels with it.

transformers keeps ``generation_config.json`` and ``preprocessor_config.json`` beside a model, open_clip
keeps ``preprocess_cfg`` in its model config; the suite does the same with dataclasses: a report model's
folder holds its decoding settings and image preprocessing, and every path that loads the model reads
them from there. A folder saved before a settings file existed loads with the dataclass defaults (the
one place each default lives) and says so in a log line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, TypeVar

from .io import atomic_write_text, read_json

__all__ = ["save_settings", "load_settings"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def save_settings(directory: str | os.PathLike[str], filename: str, settings: Any) -> Path:
    """Write the dataclass ``settings`` as ``directory/filename`` (JSON, atomically)."""
    path = Path(directory) / filename
    atomic_write_text(path, json.dumps(dataclasses.asdict(settings), indent=1) + "\n")
    return path


def load_settings(directory: str | os.PathLike[str], filename: str, cls: type[T], **fallback: Any) -> T:
    """``cls`` from ``directory/filename``; without the file, ``cls(**fallback)`` (its defaults elsewhere).

    Raises:
        ValueError: the file is not a JSON object, or names a key ``cls`` does not have (file and key named).
    """
    path = Path(directory) / filename
    if not path.is_file():
        logger.info("%s has no %s (saved before settings travelled with the model): using %s defaults",
                    directory, filename, cls.__name__)
        return cls(**fallback)
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of {cls.__name__} settings")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown {cls.__name__} key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return cls(**data)
