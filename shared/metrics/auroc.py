"""Multilabel AUROC over the CheXpert observations (torchmetrics per class, NaN where undefined)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["multilabel_auroc"]


def multilabel_auroc(scores: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Per-class AUROC (torchmetrics) and ``mauc``, their mean over classes with both outcomes.

    ``labels`` are 1 positive, 0 negative; other values (uncertain, NaN) are left out per class.
    Classes without both outcomes get NaN and are named in ``auroc_undefined``.
    """
    from torchmetrics.functional.classification import binary_auroc

    scores, labels = np.asarray(scores, float), np.asarray(labels, float)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    out: dict[str, float] = {}
    undefined = []
    for k, name in enumerate(names):
        keep = (labels[:, k] == 0) | (labels[:, k] == 1)
        y = labels[keep, k]
        if y.size == 0 or y.min() == y.max():
            out[f"auroc/{name}"] = math.nan
            undefined.append(name)
            continue
        out[f"auroc/{name}"] = float(binary_auroc(torch.tensor(scores[keep, k]), torch.tensor(y).long()))
    defined = [v for v in out.values() if not math.isnan(v)]
    out["mauc"] = float(np.mean(defined)) if defined else math.nan
    out["mauc_classes"] = len(defined)
    if undefined:
        logger.info("AUROC undefined (one outcome only) for: %s", ", ".join(undefined))
    return out
