"""What the pipeline's calls return (diffusers' ``BaseOutput`` dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils import BaseOutput
from PIL import Image

__all__ = ["CXRPipelineOutput", "CounterfactualOutput"]


@dataclass
class CXRPipelineOutput(BaseOutput):
    """``images`` as ``output_type`` asked (:data:`shared.data.image_processor.OUTPUT_TYPES`: ``"pil"``,
    ``"pt"`` (B, 1, S, S) in [0, 1], ``"np"`` (B, S, S) in [0, 1], ``"model"`` in [-1, 1]);
    ``latents``: the final latents (B, C, s, s)."""

    images: torch.Tensor | np.ndarray | list[Image.Image]
    latents: torch.Tensor


@dataclass
class CounterfactualOutput(CXRPipelineOutput):
    """:class:`CXRPipelineOutput` of an edit plus ``masks``: (B, 1, S, S) in {0, 1}, where the edit
    could act (None: plain inversion, the whole image)."""

    masks: torch.Tensor | None = None
