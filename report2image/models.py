"""Latent diffusion model configs: diffusers ``AutoencoderKL`` + ``UNet2DConditionModel`` sizes.

JSON configs in ``configs/models/ldm_*.json`` (``ldm_tiny`` for tests, ``ldm_small`` for CPU
runs at 64 px, ``ldm_base`` for GPUs at 256 px) hold the ``vae``, ``unet`` and ``conditioner``
keyword arguments and the ``image_size``; nothing here re-implements what diffusers has.
"""

from __future__ import annotations

import os
from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel

from shared.backbone.clip import MODEL_CONFIG_DIR
from shared.config import load_model_json

__all__ = ["LDM_REGISTRY", "load_ldm_config", "build_autoencoder", "build_unet", "latent_size"]

LDM_REGISTRY = {name: f"{name}.json" for name in ("ldm_tiny", "ldm_small", "ldm_base")}


def load_ldm_config(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """A latent-diffusion config by registry name or JSON path."""
    return load_model_json(name_or_path, LDM_REGISTRY, MODEL_CONFIG_DIR, ("image_size", "vae", "unet", "conditioner"),
                           "diffusion model")


def latent_size(cfg: dict[str, Any]) -> int:
    """Side of the latent grid: the VAE halves the image once per block after the first."""
    return int(cfg["image_size"]) // 2 ** (len(cfg["vae"]["block_out_channels"]) - 1)


def build_autoencoder(cfg: dict[str, Any]) -> AutoencoderKL:
    return AutoencoderKL(sample_size=int(cfg["image_size"]), **cfg["vae"])


def build_unet(cfg: dict[str, Any]) -> UNet2DConditionModel:
    channels = int(cfg["vae"]["latent_channels"])
    return UNet2DConditionModel(sample_size=latent_size(cfg), in_channels=channels, out_channels=channels,
                                **cfg["unet"])
