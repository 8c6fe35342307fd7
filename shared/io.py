"""File I/O every part of the suite shares: atomic writes (a crash never leaves half a file under its final
name) and JSON reads whose errors name the file and the line."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_text", "atomic_write_bytes", "atomic_save_image", "read_json"]


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it, so a crash never leaves half a file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _file_mode() -> int:
    """The mode a plainly created file gets (0o666 less the umask): mkstemp's temp files are 0o600, and a
    renamed temp file would otherwise keep that (outputs readable by their owner only)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _temp_beside(path: Path, suffix: str = "") -> tuple[int, str]:
    """A temp file ``.<name>.<random><suffix>`` beside ``path`` with the ordinary file mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.fchmod(fd, _file_mode())
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temp file ``.<name>.<random>`` beside ``path`` and rename it over ``path``."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_image(image: Any, path: str | os.PathLike[str]) -> None:
    """Save a PIL image to a temp file beside ``path`` (format from ``path``'s suffix), flush it, rename it:
    a killed run never leaves a truncated image under the final name."""
    from PIL import Image

    path = Path(path)
    fd, tmp = _temp_beside(path, path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format=Image.registered_extensions()[path.suffix.lower()])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike[str], error: type[Exception] = ValueError) -> Any:
    """Parse a JSON file; malformed JSON raises ``error`` naming the file, the problem and the line."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise error(f"{path} is not valid JSON: {err.msg} at line {err.lineno}") from None
