"""The CheXpert-14 observation vocabulary and the rules that combine mentions into labels.

Report labels use the CheXpert convention: 1 positive, 0 negative, -1 uncertain, NaN not
mentioned. Image (ground-truth) labels are 1/0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

#: The 5-label subset used by CheXbert-style evaluations.
CHEXBERT_5: tuple[str, ...] = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")

#: Children of "Lung Opacity" in the CheXpert hierarchy: a positive or uncertain child lifts the parent.
LUNG_OPACITY_CHILDREN: tuple[str, ...] = ("Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis")

#: Labels that count as pathology for "No Finding" (support devices do not).
PATHOLOGY_LABELS: tuple[str, ...] = tuple(
    name for name in CHEXPERT_LABELS if name not in ("No Finding", "Support Devices")
)

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
_RANK = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1}


def merge_mentions(values: Iterable[float]) -> float:
    """Combine several mentions of one observation: positive > uncertain > negative > not mentioned."""
    best, best_rank = math.nan, 0
    for value in values:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        rank = _RANK[float(value)]
        if rank > best_rank:
            best, best_rank = float(value), rank
    return best


def finalize_report_labels(labels: Mapping[str, float]) -> dict[str, float]:
    """Apply the hierarchy and "No Finding" rules to per-observation mention labels.

    * Lung Opacity becomes at least as positive as its most positive child.
    * No Finding is 1 when no pathology is positive or uncertain, else NaN (not asserted).
    """
    out = {name: float(labels.get(name, math.nan)) for name in CHEXPERT_LABELS}
    child_values = [out[c] for c in LUNG_OPACITY_CHILDREN if out[c] in (POSITIVE, UNCERTAIN)]
    out["Lung Opacity"] = merge_mentions([out["Lung Opacity"], *child_values])
    abnormal = any(out[name] in (POSITIVE, UNCERTAIN) for name in PATHOLOGY_LABELS)
    out["No Finding"] = math.nan if abnormal else POSITIVE
    return out


def image_labels(finding_names: Iterable[str]) -> dict[str, int]:
    """Ground-truth 0/1 labels of an image from the names of the findings rendered in it."""
    present = set(finding_names)
    unknown = present.difference(CHEXPERT_LABELS)
    if unknown:
        raise ValueError(f"unknown finding name(s): {sorted(unknown)}; expected CheXpert names")
    out = {name: int(name in present) for name in CHEXPERT_LABELS}
    if any(out[c] for c in LUNG_OPACITY_CHILDREN):
        out["Lung Opacity"] = 1
    out["No Finding"] = int(not any(out[name] for name in PATHOLOGY_LABELS))
    return out
