"""One registry for every model family: register, look up, build, list.

Follows timm's ``register_model`` / ``list_models(filter)`` and open_clip's discovered JSON model
configs (``add_model_config``). Each family (backbones, towers, LSU, RadCARE, tower
pre-trainers, judge classifiers, report decoders, latent-diffusion configs, trainers) is one
:class:`Registry`; its entries appear when the module that defines them is imported. An unknown
name gets one error, written here, that lists the known names.

Example::

    DECODERS = Registry("report_decoder", "image -> report decoders")
    DECODERS.register("baseline_tiny", BaselineReportModel, d_model=32, num_layers=1)
    model = DECODERS.build("baseline_tiny", vocab_size=100)
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Registry", "RegistryEntry", "UnknownNameError", "get_registry", "list_families", "list_models"]

_FAMILIES: dict[str, Registry] = {}


class UnknownNameError(KeyError, ValueError):
    """A name no registry entry has; the message lists the known names.

    A ``KeyError`` (it is a failed look-up) and a ``ValueError`` (the CLI reports those as bad
    input), with a readable ``str`` (``KeyError`` would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class RegistryEntry:
    """One registered name: what builds it, with which default arguments, and where it came from."""

    name: str
    family: str
    builder: Callable[..., Any]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: the module that registered it, or the JSON file it was read from
    source: str = ""
    #: one line for ``radloop models``
    help: str = ""
    #: anything else the family keeps per entry (e.g. a trainer's experiment dataclass)
    meta: Mapping[str, Any] = field(default_factory=dict)


class Registry:
    """The named entries of one model family.

    Args:
        family: the family's name (``backbone``, ``report_decoder``, ...); unique.
        description: one line for listings.
        required: top-level keys every JSON config of this family must hold.
    """

    def __init__(self, family: str, description: str, required: Sequence[str] = ()) -> None:
        if family in _FAMILIES:
            raise ValueError(f"a registry for '{family}' exists already")
        self.family, self.description, self.required = family, description, tuple(required)
        self._entries: dict[str, RegistryEntry] = {}
        self._config_paths: list[Path] = []
        self._json_builder: Callable[..., Any] | None = None
        _FAMILIES[family] = self

    # -- registering -------------------------------------------------------------------------------
    def register(self, name: str | None = None, builder: Callable[..., Any] | None = None, *,
                 help: str = "", meta: Mapping[str, Any] | None = None, **defaults: Any) -> Any:
        """Register ``builder`` under ``name`` with default keyword arguments.

        Used directly (``REG.register("x", Model, depth=2)``) or as a decorator on a builder
        function or class (``@REG.register()``; the name defaults to ``__name__``).
        """

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = name or fn.__name__
            doc = help or (inspect.getdoc(fn) or "").split("\n")[0]
            self._entries[key] = RegistryEntry(key, self.family, fn, dict(defaults), fn.__module__, doc,
                                               dict(meta or {}))
            return fn

        return add if builder is None else add(builder)

    def add_model_config(self, path: str | os.PathLike[str], builder: Callable[..., Any] | None = None) -> None:
        """Register every ``*.json`` in a folder (or one JSON file) by its stem, built by ``builder``.

        The folder is remembered, so configs added to it later are found by :meth:`rescan`.
        """
        path = Path(path)
        if builder is not None:
            self._json_builder = builder
        if self._json_builder is None:
            raise ValueError(f"registry '{self.family}' has no builder for JSON configs")
        if path not in self._config_paths:
            self._config_paths.append(path)
        if not path.exists():
            raise FileNotFoundError(f"no {self.family} model config folder or file at {path}")
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            cfg = self.read_config(file)
            self._entries[file.stem] = RegistryEntry(file.stem, self.family, self._json_builder, cfg, str(file),
                                                     cfg.get("description", ""))

    def rescan(self) -> None:
        """Read the JSON config folders again (open_clip's ``_rescan_model_configs``)."""
        for path in list(self._config_paths):
            self.add_model_config(path)

    # -- looking up --------------------------------------------------------------------------------
    def get(self, name: str) -> RegistryEntry:
        """The entry of ``name``; an unknown name raises :class:`UnknownNameError` listing the known ones."""
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.family} '{name}'; known: {', '.join(self.list()) or '(none)'}")
        return self._entries[name]

    def config(self, name: str) -> dict[str, Any]:
        """A fresh copy of the default arguments (or JSON config) of ``name``."""
        return copy.deepcopy(dict(self.get(name).defaults))

    def read_config(self, name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
        """A JSON config by registered name or by file path; required keys are checked, the file named."""
        path = Path(name_or_path)
        if not path.is_file():
            return self.config(str(name_or_path))
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.family} config {path} is not valid JSON: {err.msg} at line {err.lineno}") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{self.family} config {path} must hold a JSON object")
        for key in self.required:
            if key not in cfg:
                raise ValueError(f"{self.family} config {path} lacks '{key}'")
        return cfg

    def build(self, name: str, /, **kwargs: Any) -> Any:
        """Call the builder of ``name`` with its defaults updated by ``kwargs``.

        A keyword the builder does not take is named (with the builder) instead of a TypeError deep
        inside it.
        """
        entry = self.get(name)
        params = inspect.signature(entry.builder).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            unknown = sorted(k for k in kwargs if k not in params)
            if unknown:
                raise ValueError(f"{self.family} '{name}' ({entry.builder.__name__}) has no option '{unknown[0]}'")
        return entry.builder(**{**copy.deepcopy(dict(entry.defaults)), **kwargs})

    def list(self, filter: str | Sequence[str] = "*") -> list[str]:
        """Sorted names matching one or more ``fnmatch`` patterns (timm's ``list_models(filter)``)."""
        patterns = [filter] if isinstance(filter, str) else list(filter)
        return sorted(n for n in self._entries if any(fnmatch.fnmatchcase(n, p) for p in patterns))

    def entries(self) -> list[RegistryEntry]:
        """Every entry, sorted by name."""
        return [self._entries[n] for n in self.list()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, {len(self)} entries)"


def get_registry(family: str) -> Registry:
    """The registry of ``family`` (its defining module must have been imported)."""
    if family not in _FAMILIES:
        raise UnknownNameError(f"unknown model family '{family}'; known: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[family]


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def list_models(filter: str | Sequence[str] = "*", family: str | None = None) -> dict[str, list[str]]:
    """``{family: [names]}`` of the imported families (one family if given), names matching ``filter``."""
    families = [family] if family is not None else list_families()
    return {f: get_registry(f).list(filter) for f in families}
