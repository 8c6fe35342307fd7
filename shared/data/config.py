"""The ``data`` sections of experiment configs: one base with what every experiment shares."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DataConfig", "TextDataConfig"]


@dataclass
class DataConfig:
    """Where the studies are and how they are batched."""

    #: R2Gen ``annotation.json`` or a CSV / JSONL manifest
    annotation: str = "data/synthcxr/annotation.json"
    #: folder the image paths are relative to (R2Gen's --image_dir); default: the annotation's folder,
    #: or ``images/`` beside it when the paths resolve only there
    image_root: str | None = None
    #: let image paths leave ``image_root`` (absolute paths, ``..``, symlinks out): only for annotation files
    #: you trust, e.g. the manifests ``radloop augment`` writes
    allow_outside_root: bool = False
    batch_size: int = 32
    num_workers: int = 0


@dataclass
class TextDataConfig(DataConfig):
    """A data section whose run fits the report tokenizer on the training reports (R2Gen's settings)."""

    #: words seen fewer times become ``<unk>`` (R2Gen: 3 for IU X-ray, 10 for MIMIC-CXR)
    min_freq: int = 3
    #: longest report in tokens; longer ones are cut (and decoding stops there)
    max_length: int = 100
    #: the cleaning rules: ``iu_xray`` or ``mimic_cxr``
    dataset: str = "iu_xray"
