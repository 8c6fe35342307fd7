"""The one boundary between the models' pixel range and everyone else's (diffusers' ``VaeImageProcessor``).

Every model of the suite reads and writes images in [-1, 1]. Datasets on disk, metrics, the
judge and people look at [0, 1] floats, uint8 arrays or PIL images. The conversion is written
here once: :func:`to_model_range` on the way in, :func:`postprocess` (``output_type``) on the way out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["OUTPUT_TYPES", "to_model_range", "to_unit_range", "postprocess", "preprocess"]

#: what :func:`postprocess` returns for each ``output_type``
OUTPUT_TYPES = {
    "pt": "(B, 1, H, W) float tensor in [0, 1]",
    "np": "(B, H, W) float32 array in [0, 1]",
    "pil": "list of grayscale PIL images",
    "model": "(B, 1, H, W) tensor in the models' [-1, 1] range, unchanged",
}


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the models' [-1, 1]."""
    return images * 2 - 1


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """The models' [-1, 1] -> [0, 1], clamped (decoders overshoot a little)."""
    return ((images + 1) / 2).clamp(0, 1)


def postprocess(images: torch.Tensor, output_type: str = "pil") -> torch.Tensor | np.ndarray | list[Image.Image]:
    """Images (B, 1, H, W) in [-1, 1] in the form ``output_type`` asks for (see :data:`OUTPUT_TYPES`)."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}; got {output_type!r}")
    if output_type == "model":
        return images
    unit = to_unit_range(images.float().cpu())
    if output_type == "pt":
        return unit
    arr = unit[:, 0].numpy()
    if output_type == "np":
        return arr
    return [Image.fromarray((a * 255).round().astype(np.uint8), mode="L") for a in arr]


def preprocess(images: torch.Tensor | np.ndarray | Image.Image | Sequence[Image.Image]) -> torch.Tensor:
    """PIL image(s), a uint8 array, or [0, 1] floats (B, 1, H, W) / (B, H, W) -> (B, 1, H, W) in [-1, 1]."""
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, Sequence) and not isinstance(images, (torch.Tensor, np.ndarray)):
        images = np.stack([np.asarray(im.convert("L")) for im in images])
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images)
    x = images.float()
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected grayscale images (B, 1, H, W) or (B, H, W), got shape {tuple(images.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"float images must be in [0, 1] (got [{float(x.min()):.2f}, {float(x.max()):.2f}]); "
                         "images already in the models' [-1, 1] range need no preprocessing")
    return to_model_range(x)
