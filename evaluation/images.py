"""Image metrics: FID/KID with pluggable features, the real-vs-real floor, conditional FID,
MS-SSIM diversity and classifier mAUC.

Images are float tensors (N, C, H, W) in [0, 1]. A *feature extractor* is any module mapping
such a batch to (N, D); :class:`FeatureExtractor` adapts a model (the backbone's image tower,
the suite's :class:`~evaluation.classifier.CXRClassifier`, a timm model with local weights, or
any user module) by fixing channels, size and normalisation. Features are computed once per
image set and fed to torchmetrics' FID and KID through an identity feature module, so both
metrics see the same features.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureExtractor",
    "extract_features",
    "fid_kid_from_features",
    "fid_report",
    "split_half_floor",
    "conditional_fid",
    "ms_ssim_diversity",
]


class FeatureExtractor(nn.Module):
    """Adapt ``model`` to (N, C, H, W) images in [0, 1] -> (N, D) features.

    Args:
        model: maps prepared images to features; an output with a ``features`` attribute (such
            as :class:`ClassifierOutput`) or a (N, D, h, w) map (average-pooled) is accepted.
        in_chans: channels the model expects (grayscale is repeated, RGB averaged).
        image_size: resize to this side first (None: keep).
        mean, std: normalisation applied after resizing ([0, 1] -> (x - mean) / std).
    """

    def __init__(self, model: nn.Module, in_chans: int = 1, image_size: int | None = None,
                 mean: float = 0.5, std: float = 0.5) -> None:
        super().__init__()
        self.model = model.eval()
        self.in_chans, self.image_size, self.mean, self.std = in_chans, image_size, mean, std
        self._num_features: int | None = None

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> the model's channels, size and normalisation."""
        x = images.float()
        if x.shape[1] != self.in_chans:
            x = x.mean(1, keepdim=True)
            if self.in_chans != 1:
                x = x.repeat(1, self.in_chans, 1, 1)
        if self.image_size and x.shape[-1] != self.image_size:
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                          align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(self.prepare(images))
        out = getattr(out, "features", out)
        if out.dim() == 4:
            out = out.mean((2, 3))
        return out.flatten(1)

    @property
    def num_features(self) -> int:
        if self._num_features is None:
            param = next(self.model.parameters(), None)
            device = param.device if param is not None else "cpu"
            self._num_features = int(self(torch.rand(2, self.in_chans, self.image_size or 64, self.image_size or 64,
                                                     device=device)).shape[1])
        return self._num_features


def extract_features(extractor: Callable[[torch.Tensor], torch.Tensor],
                     images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """(N, D) float64 features of a tensor of images or an iterable of image batches."""
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    feats = [extractor(b).detach().double().cpu() for b in batches]
    if not feats:
        raise ValueError("no images to extract features from")
    return torch.cat(feats)


class _Precomputed(nn.Module):
    """Identity 'feature extractor' so torchmetrics consumes features we computed once."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid_kid_from_features(real: torch.Tensor, fake: torch.Tensor, kid_subset_size: int | None = None,
                          kid_subsets: int = 50, seed: int = 0) -> dict[str, float]:
    """FID and KID (torchmetrics) between two (N, D) feature sets."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: {real.shape[1]} vs {fake.shape[1]}")
    if min(len(real), len(fake)) < 2:
        raise ValueError("FID/KID need at least 2 images per set")
    dim = real.shape[1]
    fid = FrechetInceptionDistance(feature=_Precomputed(dim), normalize=True)
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    subset = kid_subset_size or min(len(real), len(fake), 1000)
    torch.manual_seed(seed)
    kid = KernelInceptionDistance(feature=_Precomputed(dim), subsets=kid_subsets, subset_size=subset, normalize=True)
    kid.update(real.double(), real=True)
    kid.update(fake.double(), real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


def split_half_floor(real: torch.Tensor, seed: int = 0) -> float:
    """FID between two random halves of the real features: the floor a perfect generator reaches
    with this many images (FID is biased upwards for small sets)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(real), generator=g)
    half = len(real) // 2
    return fid_kid_from_features(real[perm[:half]], real[perm[half : 2 * half]])["fid"]


def fid_report(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """FID, KID and the real-vs-real split-half floor, from features."""
    out = fid_kid_from_features(real, fake, seed=seed)
    out["fid_floor"] = split_half_floor(real, seed)
    out["fid_over_floor"] = out["fid"] / out["fid_floor"] if out["fid_floor"] > 0 else math.inf
    return out


def conditional_fid(real: torch.Tensor, real_labels: np.ndarray, fake: torch.Tensor, fake_labels: np.ndarray,
                    names: Sequence[str], min_count: int = 10) -> dict[str, float]:
    """Per-observation FID: real images with the finding vs images generated from reports with it.

    Observations with fewer than ``min_count`` images on either side are left out.
    """
    out = {}
    real_labels, fake_labels = np.asarray(real_labels) == 1, np.asarray(fake_labels) == 1
    for i, name in enumerate(names):
        r, f = real[torch.from_numpy(real_labels[:, i])], fake[torch.from_numpy(fake_labels[:, i])]
        if len(r) >= min_count and len(f) >= min_count:
            out[name] = fid_kid_from_features(r, f)["fid"]
    return out


def _ms_ssim_betas(size: int, kernel_size: int) -> tuple[float, ...]:
    betas = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    scales = 5
    while scales > 1 and size <= (kernel_size - 1) * 2 ** (scales - 1):
        scales -= 1
    chosen = betas[:scales]
    return tuple(b / sum(chosen) for b in chosen)


def ms_ssim_diversity(images: torch.Tensor, pairs: int = 200, seed: int = 0, kernel_size: int = 7) -> float:
    """Mean MS-SSIM over random pairs of distinct images (lower = more diverse).

    The number of scales shrinks for small images so that every scale is valid; weights are the
    standard MS-SSIM betas renormalised.
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

    n = len(images)
    if n < 2:
        raise ValueError("MS-SSIM diversity needs at least 2 images")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, pairs)
    j = (i + rng.integers(1, n, pairs)) % n
    betas = _ms_ssim_betas(min(images.shape[-2:]), kernel_size)
    x = images.float().clamp(0, 1)
    value = ms_ssim(x[i], x[j], data_range=1.0, kernel_size=kernel_size, betas=betas, normalize="relu")
    return float(value)
