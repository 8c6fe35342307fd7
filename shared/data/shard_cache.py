"""Frozen-model outputs of a whole data set on disk: safetensors shards, memory-mapped when read.

At MIMIC-CXR scale (377k studies) the outputs of the frozen models a trainer reads every step (tower
grids, autoencoder latents, text token features) no longer fit in memory, and computing them on one
process while the others wait wastes the machine. A :class:`ShardedCache` holds named tensors, one row
per item, in shards of ``shard_size`` rows under ``<root>/<key>/``:

* **build**: every process (``accelerate``'s :class:`~accelerate.PartialState`: one process, or all of an
  ``accelerate launch``) computes the shards ``s`` with ``s % num_processes == process_index`` on its own
  device, each written under a temporary name and renamed, so a killed build resumes where it stopped;
  the main process writes ``manifest.json`` last: a folder with a manifest is complete.
* **key**: the caller's description of everything the rows depend on (data, weights, sizes) hashed into
  the folder name, so a changed model or data set computes a new cache instead of reading a stale one.
* **read**: ``cache[i]`` returns row ``i`` of every tensor; shards are opened with ``safe_open``, whose
  slices read from the memory-mapped file, so the resident memory of a training process stays flat as
  the data set grows (the OS page cache holds what is hot).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["ShardedCache", "cache_key", "module_digest", "files_digest"]

MANIFEST = "manifest.json"


def cache_key(description: Any) -> str:
    """A short hex key of a JSON-serialisable description (sorted keys)."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:24]


def module_digest(module: torch.nn.Module) -> str:
    """A hex digest of a module's weights and buffers (what a cache of its outputs depends on)."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def files_digest(paths: Sequence[str | os.PathLike[str]]) -> str:
    """A hex digest of files' paths, sizes and modification times (cheap at 377k images: no reads)."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


class ShardedCache:
    """Named tensors with one row per item, read from a complete cache folder (see the module docstring).

    Args:
        folder: a folder :meth:`build` finished (holding ``manifest.json``).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(f"{self.folder}: not a complete cache ({MANIFEST} missing)")
        meta = json.loads(manifest.read_text())
        self.length, self.shard_size = int(meta["length"]), int(meta["shard_size"])
        self.names: list[str] = list(meta["names"])
        self._open: dict[int, Any] = {}

    def __len__(self) -> int:
        return self.length

    def _shard(self, s: int) -> Any:
        from safetensors import safe_open

        handle = self._open.get(s)
        if handle is None:
            handle = self._open[s] = safe_open(str(self.folder / _shard_name(s)), framework="pt")
        return handle

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"row {index} of a cache of {self.length}")
        shard = self._shard(index // self.shard_size)
        row = index % self.shard_size
        return {name: shard.get_slice(name)[row:row + 1][0] for name in self.names}

    def rows(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Rows ``indices`` of every tensor, stacked: {name: (len(indices), ...)}."""
        items = [self[i] for i in indices]
        return {name: torch.stack([it[name] for it in items]) for name in self.names}

    def __getstate__(self) -> dict[str, Any]:
        # loader workers re-open the shards (file handles do not pickle)
        return {**self.__dict__, "_open": {}}

    @classmethod
    def build(cls, root: str | os.PathLike[str], description: Any, length: int,
              compute: Callable[[range], dict[str, torch.Tensor]], shard_size: int = 4096) -> ShardedCache:
        """Compute (or reuse) the cache of ``length`` items under ``<root>/<cache_key(description)>``.

        ``compute(range(a, b))`` returns {name: (b - a, ...)} for items ``a..b-1`` (on this process's device;
        moved to the CPU here). Every process of the current ``accelerate`` state builds its share of the
        shards; all of them return the same complete cache.
        """
        from accelerate import PartialState
        from safetensors.torch import save_file

        if length < 1 or shard_size < 1:
            raise ValueError(f"a cache needs length >= 1 and shard_size >= 1 (got {length}, {shard_size})")
        state = PartialState()
        folder = Path(root) / cache_key(description)
        if (folder / MANIFEST).is_file():
            logger.info("cache of %d items read from %s", length, folder)
            return cls(folder)
        folder.mkdir(parents=True, exist_ok=True)
        shards = range(0, (length + shard_size - 1) // shard_size)
        names: list[str] = []
        done = 0
        for s in shards:
            path = folder / _shard_name(s)
            if s % state.num_processes != state.process_index or path.is_file():
                continue
            rows = compute(range(s * shard_size, min((s + 1) * shard_size, length)))
            names = sorted(rows)
            tmp = path.with_name(f".{path.name}.{state.process_index}.tmp")
            save_file({k: v.detach().cpu().contiguous() for k, v in rows.items()}, str(tmp))
            os.replace(tmp, path)
            done += 1
        state.wait_for_everyone()
        if state.is_main_process:
            if not names:  # every shard was there already (a resumed build): read the names back
                from safetensors import safe_open

                with safe_open(str(folder / _shard_name(0)), framework="pt") as f:
                    names = sorted(f.keys())
            atomic_write_text(folder / MANIFEST, json.dumps(
                {"length": length, "shard_size": shard_size, "names": names, "description": description},
                indent=1, default=str) + "\n")
        state.wait_for_everyone()
        logger.info("cache of %d items in %s (%d shards computed by process %d)", length, folder, done,
                    state.process_index)
        return cls(folder)
