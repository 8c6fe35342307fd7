"""Per-study region masks (where a finding is), read from a masks file.

The file is JSON: ``{"masks": {study_id: png path relative to the file}, ...}`` (other keys are kept for
the reader: what drew the masks, which findings). ``synthcxr.finding_masks`` writes one for SynthCXR;
a real data set's segmentations (SIIM-ACR pneumothorax, lesion outlines) go in the same format. A mask
PNG is square, non-zero inside the region, at the image's size or any other (it is resized and cropped
as the study's image is, so the two stay aligned).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.io import read_json

from .transforms import PreprocessConfig

__all__ = ["read_region_masks", "load_region_mask"]


def read_region_masks(path: str | os.PathLike[str]) -> dict[str, Path]:
    """{study id: mask PNG path} of a masks file; a malformed file or a missing PNG raises naming both."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: region masks file not found")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("masks"), dict):
        raise ValueError(f"{path}: expected a JSON object with a 'masks' object {{study id: PNG path}}")
    out: dict[str, Path] = {}
    for study, rel in data["masks"].items():
        if not isinstance(rel, str):
            raise ValueError(f"{path}: the mask of study {study!r} must be a path string, got {rel!r}")
        png = path.parent / rel
        if not png.is_file():
            raise FileNotFoundError(f"{path}: the mask of study {study!r}, {png}, is not a file")
        out[str(study)] = png
    return out


def load_region_mask(path: str | os.PathLike[str], preprocess: PreprocessConfig) -> torch.Tensor:
    """A mask PNG as the (1, S, S) float tensor in {0, 1} on the pixels ``preprocess`` makes of the study's
    image (same resize and centre crop; any pixel the region touches after resizing counts as inside)."""
    with Image.open(path) as im:
        mask = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32) / 255.0)
    if mask.shape[0] != mask.shape[1]:
        raise ValueError(f"{path}: a region mask must be square, got {tuple(mask.shape)} pixels")
    # the image's geometry without its intensity normalisation
    geometry = PreprocessConfig(preprocess.image_size, preprocess.resize, mean=0.0, std=1.0)
    return (geometry.apply(mask[None, None])[0] > 0).float()
