"""Latent diffusion model configs: diffusers ``AutoencoderKL`` + ``UNet2DConditionModel`` sizes.

JSON configs shipped in ``report2image/model_configs/ldm_*.json`` and discovered at import
(``ldm_tiny`` for tests, ``ldm_small`` for CPU runs at 64 px, ``ldm_base`` for GPUs at 256 px) hold the
``vae``, ``unet`` and ``conditioner`` keyword arguments and the ``image_size``; nothing here
re-implements what diffusers has.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel

from shared.registry import Registry

__all__ = ["LDM_CONFIGS", "LDM_CONFIG_DIR", "load_ldm_config", "build_autoencoder", "build_unet", "latent_size"]

LDM_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"


def load_ldm_config(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """A latent-diffusion config by registry name or JSON path."""
    return LDM_CONFIGS.read_config(name_or_path)


def latent_size(cfg: dict[str, Any]) -> int:
    """Side of the latent grid: the VAE halves the image once per block after the first."""
    return int(cfg["image_size"]) // 2 ** (len(cfg["vae"]["block_out_channels"]) - 1)


def build_autoencoder(cfg: dict[str, Any]) -> AutoencoderKL:
    return AutoencoderKL(sample_size=int(cfg["image_size"]), **cfg["vae"])


def build_unet(cfg: dict[str, Any]) -> UNet2DConditionModel:
    channels = int(cfg["vae"]["latent_channels"])
    return UNet2DConditionModel(sample_size=latent_size(cfg), in_channels=channels, out_channels=channels,
                                **cfg["unet"])


def _ldm_config(**cfg: Any) -> dict[str, Any]:
    # A latent-diffusion config describes three components (autoencoder, UNet, conditioner) that
    # ``train_diffusion`` builds one by one, so the registry hands back the validated config.
    return cfg


LDM_CONFIGS = Registry("ldm", "latent-diffusion sizes (autoencoder, UNet, conditioner JSON configs)",
                       required=("image_size", "vae", "unet", "conditioner"))
LDM_CONFIGS.add_model_config(LDM_CONFIG_DIR, _ldm_config)
