"""Where the model zoo lives and what ``zoo:NAME`` means.

The zoo is a folder of saved model folders (the suite's own ``save_pretrained`` layout, fp16
safetensors, a model card ``README.md`` and ``zoo_entry.json``), one sub-folder per data set::

    zoo/synthcxr64/radclip_small/{config.json, diffusion_pytorch_model.safetensors, README.md, ...}

``zoo:radclip_small`` names an entry wherever it is unique; ``zoo:synthcxr64/radclip_small`` names it
in full. Every ``from_pretrained`` of the suite takes either form or a plain path. The zoo folder is
``$RADLOOP_ZOO`` when set, else the repository's ``zoo/`` (a source checkout), else the installed
``radloop_zoo`` package (``pip install ./zoo``: the zoo as its own distribution, for a RadLoop
installed outside the repository). Training and exporting entries is
the CLI's business (``radloop zoo``); this module only resolves names, so loading needs no import
beyond the model's own.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = ["ZOO_PREFIX", "ZOO_ENV", "ZOO_PACKAGE", "ENTRY_FILE", "zoo_root", "zoo_entries", "resolve_zoo",
           "is_zoo_name"]

ZOO_PREFIX = "zoo:"
#: environment variable that moves the zoo folder (tests, installed copies)
ZOO_ENV = "RADLOOP_ZOO"
#: the import name of the zoo's own distribution (``zoo/pyproject.toml``)
ZOO_PACKAGE = "radloop_zoo"
#: what makes a folder a zoo entry (written by ``radloop zoo export``)
ENTRY_FILE = "zoo_entry.json"


def zoo_root() -> Path:
    """The zoo folder: ``$RADLOOP_ZOO``, else the repository's ``zoo/``, else the installed ``radloop_zoo``."""
    env = os.environ.get(ZOO_ENV)
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1] / "zoo"
    if checkout.is_dir():
        return checkout
    # located, never imported: the package is data
    spec = importlib.util.find_spec(ZOO_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return checkout  # absent: resolve_zoo then names it and says how to install the zoo


def zoo_entries(root: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """``{"dataset/name": folder}`` of every entry under ``root`` (default :func:`zoo_root`), sorted."""
    root = Path(root) if root is not None else zoo_root()
    if not root.is_dir():
        return {}
    found = {f"{p.parent.parent.name}/{p.parent.name}": p.parent for p in root.glob(f"*/*/{ENTRY_FILE}")}
    return dict(sorted(found.items()))


def is_zoo_name(name: str | os.PathLike[str]) -> bool:
    return isinstance(name, str) and name.startswith(ZOO_PREFIX)


def resolve_zoo(name_or_path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
                ) -> str | os.PathLike[str]:
    """The folder of a ``zoo:`` name; any other argument comes back unchanged.

    Raises FileNotFoundError naming the known entries when the name matches none, ValueError when a
    short name matches entries of several data sets.
    """
    if not is_zoo_name(name_or_path):
        return name_or_path
    name = str(name_or_path)[len(ZOO_PREFIX):].strip("/")
    entries = zoo_entries(root)
    if name in entries:
        return str(entries[name])
    matches = [key for key in entries if key.split("/", 1)[1] == name]
    if len(matches) == 1:
        return str(entries[matches[0]])
    if matches:
        raise ValueError(f"zoo:{name} is ambiguous: {', '.join('zoo:' + m for m in matches)}")
    known = ", ".join(entries) or "none"
    hint = "" if entries else "; outside the repository install the zoo with `pip install ./zoo` or set RADLOOP_ZOO"
    raise FileNotFoundError(f"no zoo entry '{name}' under {root or zoo_root()} (known: {known}); "
                            f"`radloop zoo list` shows what can be trained{hint}")
