"""One run per output folder: ``<folder>/.radloop.lock`` holds the pid and host of the run that owns it.

A second run pointed at the same folder refuses with a message naming the lock and its owner. A lock
whose process is gone (a run killed with ``kill -9`` leaves one) is detected and taken over, with a
warning. A lock from another host cannot be checked and is respected.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "RunLock"]

LOCK_NAME = ".radloop.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Hold ``folder`` for this process (``with RunLock(folder): ...`` or ``acquire``/``release``)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.owned = False
        #: the stale owner this lock replaced, if any (``{"pid", "host"}``, or None for an unreadable file)
        self.took_over: dict[str, Any] | None | bool = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # unreadable: a lock cut short while being written, so stale
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None

    @staticmethod
    def _holds(holder: dict[str, Any] | None) -> bool:
        """Whether ``holder`` still holds the lock: alive on this host, or on another (unknowable)."""
        return holder is not None and (holder.get("host") != socket.gethostname() or _alive(holder["pid"]))

    def _in_use(self, holder: dict[str, Any]) -> FileExistsError:
        return FileExistsError(
            f"{self.path.parent} is in use by another run (pid {holder['pid']} on {holder.get('host')}; "
            f"lock file {self.path}); wait for it, or delete the lock if that run is gone")

    def check(self) -> None:
        """Raise like :meth:`acquire` would while another live run holds the folder; take nothing
        (the CLI checks before it writes the run's config into the folder)."""
        holder = self._holder() if self.path.is_file() else None
        if self._holds(holder) and holder != {"pid": os.getpid(), "host": socket.gethostname()}:
            raise self._in_use(holder)

    def acquire(self) -> RunLock:
        """Take the lock; raise ``FileExistsError`` naming the lock while another live run holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder == me:
                    raise FileExistsError(f"{self.path.parent} is already held by this process") from None
                if self._holds(holder):
                    raise self._in_use(holder) from None
                logger.warning("taking over the stale lock %s (owner %s is gone)", self.path, holder)
                self.took_over = holder
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(me, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self.owned = True
            return self
        raise FileExistsError(f"could not take the lock {self.path}: other runs keep taking it")

    def release(self) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
