"""Import every module that registers models or trainers, so the registries are complete.

The registries live with the code they describe (:mod:`shared.registry`); importing a family's
module fills it. The CLI calls :func:`load_registries` before it lists models or resolves a
trainer, and only then (the imports take seconds: torch, diffusers, open_clip).
"""

from __future__ import annotations

import importlib

from shared.registry import list_families, list_models

__all__ = ["REGISTERING_MODULES", "load_registries", "list_models", "list_families"]

#: the modules whose import registers a family's entries
REGISTERING_MODULES = (
    "shared.backbone.towers",
    "shared.backbone.clip",
    "image2report.lsu",
    "image2report.radcare",
    "shared.backbone.classifier",
    "shared.backbone.train",
    "image2report.pretrain",
    "shared.backbone.train_tower",
    "shared.backbone.text_align",
    "image2report",
    "image2report.train",
    "report2image.models",
    "report2image.autoencoder",
    "report2image.train",
    "evaluation.classifier",
    "evaluation.train_classifier",
)


def load_registries() -> None:
    """Import :data:`REGISTERING_MODULES` (cheap after the first call)."""
    for module in REGISTERING_MODULES:
        importlib.import_module(module)
