"""Pixel-level image similarity on [0, 1] images: PSNR and the SSIM map (one implementation each, so the
autoencoder's checkpoint selection and ``evaluation``'s loop metrics measure the same thing)."""

from __future__ import annotations

import torch

__all__ = ["psnr", "ssim_map", "MAX_PSNR"]

MAX_PSNR = 100.0  # dB, reported for identical images instead of infinity


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image PSNR in dB for [0, 1] images (N, C, H, W), over ``mask`` pixels when given; capped at 100."""
    err = (a.float() - b.float()) ** 2
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        m = mask.float().expand_as(err)
        mse = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).clamp(max=MAX_PSNR)


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM map (N, C, H, W) (torchmetrics, Gaussian window 7, data range 1)."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    _, full = ssim(a.float(), b.float(), data_range=1.0, kernel_size=7, reduction="none", return_full_image=True)
    return full
