"""Where each finding is drawn: per-study masks from SynthCXR's causal model.

A SynthCXR study's image is ``render(patient, findings, acquisition)``; rendering it again without one
finding (no quantum noise either time) and differencing gives the pixels that finding changed. The union
over the chosen findings, dilated by a pixel, is the study's mask. A diffusion run reads the masks file
(``data.region_masks``) and weights its denoising loss there (``loss.region_weight``), so that a finding
a few pixels wide, a rib step-off, is not drowned by the rest of the image.

The file format is what a user with real segmentations writes too (SIIM-ACR pneumothorax masks, lesion
outlines): ``{"masks": {study_id: png path relative to the file}, ...}``, each PNG the size of the study's
image or any square size (it is resized as the image is), non-zero inside.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared.io import atomic_write_bytes, atomic_write_text

from .counterfactuals import read_attributes
from .generate import to_png
from .renderer import render
from .world import FINDING_SPECS, Acquisition, Finding, Patient

logger = logging.getLogger(__name__)

__all__ = ["finding_mask", "write_finding_masks", "MASKS_FILE", "RARE_FINDINGS"]

#: the masks file ``write_finding_masks`` writes into a data folder
MASKS_FILE = "finding_masks.json"
#: the findings the masks cover by default: the zoo data's three rarest, each a small part of the image
RARE_FINDINGS = ("Fracture", "Pneumothorax", "Lung Lesion")


def finding_mask(patient: Patient, findings: Sequence[Finding], acquisition: Acquisition, size: int,
                 names: Sequence[str], threshold: float = 0.01, dilate: int = 1) -> np.ndarray | None:
    """(size, size) bool mask of the frontal-view pixels the findings called ``names`` change by more than
    ``threshold`` (images in [0, 1]), dilated by ``dilate`` pixels; None when the study has none of them."""
    from scipy.ndimage import binary_dilation

    chosen = [f for f in findings if f.name in names]
    if not chosen:
        return None
    full = render(patient, findings, acquisition, size, "frontal", noise=False)
    mask = np.zeros((size, size), dtype=bool)
    for f in chosen:
        # one finding at a time: two findings that overlap must not hide each other's pixels
        without = render(patient, [g for g in findings if g is not f], acquisition, size, "frontal", noise=False)
        mask |= np.abs(full - without) > threshold
    return binary_dilation(mask, iterations=dilate) if dilate > 0 and mask.any() else mask


def write_finding_masks(data_dir: str | os.PathLike[str], names: Sequence[str] = RARE_FINDINGS,
                        splits: Sequence[str] = ("train",), threshold: float = 0.01, dilate: int = 1) -> Path:
    """Masks of ``names`` for every study of ``splits`` in a SynthCXR folder whose image shows one of them
    and whose report is its own (a swapped report does not describe the finding the mask marks); written as
    ``finding_masks/<study id>.png`` beside ``MASKS_FILE``, whose path is returned."""
    data_dir = Path(data_dir)
    unknown = [n for n in names if n not in FINDING_SPECS]
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; SynthCXR draws {sorted(FINDING_SPECS)}")
    size = int(json.loads((data_dir / "synthcxr.json").read_text())["config"]["size"])
    masks: dict[str, str] = {}
    counts = dict.fromkeys(names, 0)
    for rec in read_attributes(data_dir):
        if rec["split"] not in splits or rec.get("wrong_report"):
            continue
        findings = [Finding.from_dict(f) for f in rec["findings"]]
        mask = finding_mask(Patient.from_dict(rec["patient"]), findings, Acquisition.from_dict(rec["acquisition"]),
                            size, names, threshold, dilate)
        if mask is None or not mask.any():
            continue
        rel = f"finding_masks/{rec['id']}.png"
        atomic_write_bytes(data_dir / rel, to_png(mask.astype(np.float32)))
        masks[rec["id"]] = rel
        for f in findings:
            if f.name in counts:
                counts[f.name] += 1
    out = data_dir / MASKS_FILE
    atomic_write_text(out, json.dumps({"masks": masks, "findings": list(names), "splits": list(splits),
                                       "threshold": threshold, "dilate": dilate}, indent=1) + "\n")
    logger.info("%d finding masks (%s) -> %s", len(masks), ", ".join(f"{k} {v}" for k, v in counts.items()), out)
    return out

