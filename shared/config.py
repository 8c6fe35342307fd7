"""Experiment configuration: defaults <- experiment YAML <- CLI ``key=value`` overrides.

Every layer is merged in OmegaConf *struct* mode, so a key that the defaults do not define
is an error that names the key and where it came from, instead of a silently ignored typo.
Each run folder receives the resolved config and the git SHA of the code that ran.

An experiment file may start from other files: ``defaults: [_report.yaml]`` (paths relative to
the file; each may have its own ``defaults``) are merged first, in order, then the file itself, so
a file states only what differs from its base (Hydra's defaults list, without Hydra).

Files and overrides are read with YAML 1.2 booleans: only ``true``/``false`` are booleans, so
``train.mixed_precision=no`` stays the string ``"no"`` (YAML 1.1 would make ``no``, ``off``, ``yes``
and ``on`` booleans, and a string field would receive ``"False"``). A boolean field still accepts
those words: OmegaConf converts them when it validates the field.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf._yaml import get_yaml_loader
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

# file I/O lives in shared.io; these names are re-exported so that old imports keep working
from .io import atomic_save_image, atomic_write_bytes, atomic_write_text, read_json

logger = logging.getLogger(__name__)

__all__ = ["ConfigError", "load_config", "save_run_config", "git_sha", "atomic_write_text", "atomic_write_bytes",
           "atomic_save_image", "read_json"]


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file or key."""


_BOOL = "tag:yaml.org,2002:bool"


class _Yaml12Loader(get_yaml_loader()):  # type: ignore[misc]
    """OmegaConf's YAML loader (its float and duplicate-key handling) with YAML 1.2 booleans."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in _Yaml12Loader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506  (a SafeLoader subclass)


def _as_config(defaults: Any) -> DictConfig:
    if isinstance(defaults, DictConfig):
        return defaults.copy()
    if dataclasses.is_dataclass(defaults):
        return OmegaConf.structured(defaults)
    if isinstance(defaults, Mapping):
        return OmegaConf.create(dict(defaults))
    raise TypeError(f"defaults must be a mapping, a dataclass or a DictConfig, got {type(defaults).__name__}")


def _open_free_mappings(cfg: DictConfig) -> None:
    """Let dataclass fields typed ``dict`` (e.g. a model's free-form ``options``) take new keys.

    Struct mode locks every node; in a dataclass schema a field typed ``dict`` is the schema's way
    of saying "any key here" (the consumer checks those keys itself), so it is opened again after
    the lock. Plain-mapping schemas stay locked throughout.
    """
    if not dataclasses.is_dataclass(cfg._metadata.object_type):
        return
    for key in cfg:
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            if node._metadata.object_type is dict:
                OmegaConf.set_struct(node, False)
            else:
                _open_free_mappings(node)


def _merge(base: DictConfig, other: DictConfig, source: str, key: str | None = None) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except (ConfigKeyError, ConfigAttributeError) as err:
        key = key or getattr(err, "full_key", None) or getattr(err, "key", None) or str(err).splitlines()[0]
        raise ConfigError(f"unknown config key {str(key)!r} in {source}") from None
    except (OmegaConfBaseException, OverflowError) as err:  # OverflowError: a huge integer for a float key
        key = key or getattr(err, "full_key", None)
        first = (str(err).splitlines() or [""])[0]
        where = f"key {str(key)!r} " if key else ""
        raise ConfigError(f"bad value for {where}in {source}: {first}") from None


def load_config(
    defaults: Any,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
) -> DictConfig:
    """Build the resolved config of one run.

    Args:
        defaults: the full schema with default values (dict, dataclass or DictConfig). Only keys
            present here may be set by the file or the overrides.
        config_file: an experiment YAML file; may set any subset of the default keys.
        overrides: ``key.sub=value`` strings from the command line.

    Returns:
        A struct-mode ``DictConfig`` with interpolations resolved.

    Raises:
        ConfigError: unknown key, malformed override or unreadable file, naming it.
    """
    cfg = _as_config(defaults)
    OmegaConf.set_struct(cfg, True)
    _open_free_mappings(cfg)
    if config_file is not None:
        for path, file_cfg in _composed_files(Path(config_file)):
            cfg = _merge(cfg, file_cfg, str(path))
    for item in overrides:
        if "=" not in item:
            # repr: a value with a newline or control characters still gives a one-line error
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        try:
            dot = OmegaConf.create()
            OmegaConf.update(dot, key, _load_yaml(raw) if raw else "", merge=True)
        except (OmegaConfBaseException, yaml.YAMLError) as err:
            raise ConfigError(f"cannot parse override {item!r}: {(str(err).splitlines() or [''])[0]}") from None
        cfg = _merge(cfg, dot, "a command-line override", key)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve config: {str(err).splitlines()[0]}") from None
    return cfg


def _read_config_file(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        file_cfg = OmegaConf.create(_load_yaml(path.read_text(encoding="utf-8")) or {})
    except Exception as err:  # yaml errors come in several types
        raise ConfigError(f"cannot parse config file {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(file_cfg, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return file_cfg


def _composed_files(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[Path, DictConfig]]:
    """``path`` and the files its ``defaults`` list names, base first (each with its own defaults)."""
    if path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path.resolve()))
        raise ConfigError(f"config files include each other: {cycle}")
    file_cfg = _read_config_file(path)
    bases = file_cfg.pop("defaults", [])
    if isinstance(bases, str):
        bases = [bases]
    if not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"'defaults' in {path} must be a file name or a list of file names")
    out: list[tuple[Path, DictConfig]] = []
    for base in bases:
        out += _composed_files(path.parent / base, (*chain, path.resolve()))
    return [*out, (path, file_cfg)]


def git_sha(cwd: str | os.PathLike[str] | None = None) -> str:
    """The commit of the code that runs (with ``-dirty`` when it has local changes), or ``unknown``."""
    where = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def save_run_config(cfg: DictConfig, run_dir: str | os.PathLike[str], argv: Sequence[str] | None = None) -> Path:
    """Write ``config.yaml`` (the resolved config) and ``run_info.json`` (git SHA, argv) into ``run_dir``."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    info = {"git_sha": git_sha(), "argv": list(argv) if argv is not None else None}
    atomic_write_text(run_dir / "run_info.json", json.dumps(info, indent=2) + "\n")
    return run_dir / "config.yaml"
