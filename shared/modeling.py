"""What every RadLoop model folder shares: a class check on load and the tokenizer beside the weights.

Models subclass ``RadLoopModel`` (a diffusers ``ModelMixin, ConfigMixin``): ``save_pretrained``
writes ``config.json`` + ``*.safetensors`` and, when the model holds a tokenizer,
``report_tokenizer.json``; ``from_pretrained`` refuses a folder written by another model class
with one clear sentence instead of a shape error deep in ``load_state_dict``.

Model folders may come from anyone, so loading reads JSON and safetensors only: ``config.json`` is
checked (its class name must be the one asked for) before any class is built, and weights in a
pickle file (``.bin``/``.pt``, which can run code when read) are refused, not loaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin

from .io import read_json
from .text.tokenizer import TOKENIZER_FILE, ReportTokenizer
from .zoo import resolve_zoo

__all__ = ["RadLoopModel", "check_model_folder", "check_safetensors", "load_state_dict_file", "saved_class"]


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``state_dict``/``model`` keys unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        raise ValueError(f"cannot read weights {path}: {type(err).__name__}: {err}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds no state dict")
    return obj


def saved_class(path: str | os.PathLike[str], classes: Mapping[str, type | None] | Iterable[type],
                what: str | None = None, index_file: str = "config.json") -> tuple[Path, type | None]:
    """The one loader's dispatch: which of ``classes`` wrote the saved folder (or ``zoo:NAME``) at ``path``.

    Reads only ``index_file`` (``config.json``, a pipeline's ``model_index.json``) and its ``_class_name``;
    nothing is built or imported from the folder. Returns the resolved folder and the class.

    Raises:
        FileNotFoundError: the folder holds no ``index_file``.
        ValueError: another class wrote it (the message names both).
    """
    table = dict(classes) if isinstance(classes, Mapping) else {c.__name__: c for c in classes}
    folder = Path(resolve_zoo(path))
    config = folder / index_file
    if not config.is_file():
        raise FileNotFoundError(f"no saved model in {folder} ({index_file} missing)")
    name = read_json(config).get("_class_name")
    if name not in table:
        expected = what or " or ".join(sorted(table))
        raise ValueError(f"{folder} holds a checkpoint of {name}, not of {expected}")
    return folder, table[name]


def check_model_folder(path: str | os.PathLike[str], expected: str) -> Path:
    """Raise a one-line error unless ``path`` holds a saved ``expected`` model (see :func:`saved_class`)."""
    return saved_class(path, {expected: object})[0]


def check_safetensors(folder: str | os.PathLike[str]) -> Path:
    """Raise a one-line error unless ``folder`` holds its weights as ``.safetensors`` (never a pickle)."""
    folder = Path(folder)
    if not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        why = f"only {', '.join(pickled)}, a pickle format that can run code when read" if pickled else "none found"
        raise FileNotFoundError(f"{folder}: no .safetensors weights ({why}); RadLoop loads safetensors only")
    return folder


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or os.sep in name.split("/", 1)[-1]


class RadLoopModel(ModelMixin, ConfigMixin):
    """Base of RadLoop models: diffusers save/load plus the tokenizer and a class check."""

    tokenizer: ReportTokenizer | None = None

    def save_pretrained(self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], *args: Any, **kwargs: Any):
        """A saved folder, a ``zoo:NAME`` entry (:mod:`shared.zoo`) or a hub id you pass.

        Weights stored in half precision (zoo entries) load into a float32 model unless
        ``torch_dtype`` says otherwise: the CPU computes in float32.
        """
        pretrained_model_name_or_path = resolve_zoo(pretrained_model_name_or_path)
        path = Path(pretrained_model_name_or_path)
        if path.exists() or _looks_local(str(pretrained_model_name_or_path)):
            # A local folder never falls through to a hub download attempt.
            check_safetensors(check_model_folder(path, cls.__name__))
        kwargs.setdefault("use_safetensors", True)
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        tok = Path(pretrained_model_name_or_path) / TOKENIZER_FILE
        if tok.is_file():
            model.tokenizer = ReportTokenizer.from_pretrained(tok)
        return model
