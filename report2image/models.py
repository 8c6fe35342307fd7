"""Latent diffusion model configs: diffusers ``AutoencoderKL`` + ``UNet2DConditionModel`` sizes.

JSON configs in ``configs/models/ldm_*.json`` (``ldm_tiny`` for tests, ``ldm_small`` for CPU
runs at 64 px, ``ldm_base`` for GPUs at 256 px) hold the ``vae``, ``unet`` and ``conditioner``
keyword arguments and the ``image_size``; nothing here re-implements what diffusers has.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel

from shared.backbone.clip import MODEL_CONFIG_DIR

__all__ = ["LDM_REGISTRY", "load_ldm_config", "build_autoencoder", "build_unet", "latent_size"]

LDM_REGISTRY = {name: f"{name}.json" for name in ("ldm_tiny", "ldm_small", "ldm_base")}


def load_ldm_config(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """A latent-diffusion config by registry name or JSON path."""
    path = Path(name_or_path)
    if not path.is_file():
        if str(name_or_path) not in LDM_REGISTRY:
            raise KeyError(f"unknown diffusion model '{name_or_path}'; registered: {sorted(LDM_REGISTRY)} or a JSON path")
        path = MODEL_CONFIG_DIR / LDM_REGISTRY[str(name_or_path)]
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"diffusion model config {path} is not valid JSON: {err.msg}") from None
    for key in ("image_size", "vae", "unet", "conditioner"):
        if key not in cfg:
            raise ValueError(f"diffusion model config {path} lacks '{key}'")
    return cfg


def latent_size(cfg: dict[str, Any]) -> int:
    """Side of the latent grid: the VAE halves the image once per block after the first."""
    return int(cfg["image_size"]) // 2 ** (len(cfg["vae"]["block_out_channels"]) - 1)


def build_autoencoder(cfg: dict[str, Any]) -> AutoencoderKL:
    return AutoencoderKL(sample_size=int(cfg["image_size"]), **cfg["vae"])


def build_unet(cfg: dict[str, Any]) -> UNet2DConditionModel:
    channels = int(cfg["vae"]["latent_channels"])
    return UNet2DConditionModel(sample_size=latent_size(cfg), in_channels=channels, out_channels=channels,
                                **cfg["unet"])
