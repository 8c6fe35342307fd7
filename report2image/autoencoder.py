"""``radloop train autoencoder``: the latent-diffusion autoencoder on its own, selected by PSNR.

The findings of a chest X-ray are made of thin lines (tubes, the pleural line of a pneumothorax,
Kerley lines, fracture gaps) and small blobs (nodules). A plain L1 autoencoder blurs exactly those,
so :class:`AutoencoderLoss` adds, besides L1 and the KL term:

* ``ssim``: 1 - SSIM (local structure and contrast, Gaussian window 7);
* ``gradient``: L1 between the images' horizontal and vertical finite differences, which weights
  edges the way the findings need (a thin line is mostly edge);
* ``perceptual`` (off by default): L1 between the frozen features of an image tower
  (e.g. ``zoo:radclip_small``), since no LPIPS weights can be downloaded.

Validation reports PSNR and SSIM on [0, 1] images of the validation split; ``best`` has the
highest PSNR. After training, ``scaling_factor`` is set to 1 / std of the training latents (as
Stable Diffusion's), in both ``best`` and ``final``.

    radloop train autoencoder --config configs/zoo/autoencoder64.yaml
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn
from torch.utils.data import Dataset

from shared.data.config import DataConfig
from shared.data.dataset import ReportImageDataset, collate_samples
from shared.metrics.image import psnr, ssim_map
from shared.training import TRAINERS, TrainConfig, Trainer, TrainResult, seed_everything, training_loader
from shared.zoo import resolve_zoo

from .models import build_autoencoder, load_ldm_config

logger = logging.getLogger(__name__)

__all__ = ["AutoencoderExperiment", "AutoencoderLossConfig", "AutoencoderLoss", "ImagesOnly", "train_autoencoder",
           "fit_autoencoder", "latent_scale", "latent_space_mismatch", "reconstruct", "reconstruction_scores"]


@dataclass
class AutoencoderDataConfig(DataConfig):
    #: validation images scored at every evaluation
    val_samples: int = 256


@dataclass
class AutoencoderModelConfig:
    #: the latent-diffusion config whose ``vae`` part is built (``load_ldm_config``)
    name: str = "ldm_small"
    #: start from this trained AutoencoderKL (a folder or ``zoo:`` name) instead of random weights
    init_from: str | None = None
    #: train the decoder only: the encoder, and so the latents every UNet on it was trained on, stay as they are
    #: (its ``scaling_factor`` is kept too); needs ``init_from``
    decoder_only: bool = False


@dataclass
class AutoencoderLossConfig:
    l1_weight: float = 1.0
    ssim_weight: float = 0.0
    gradient_weight: float = 0.0
    kl_weight: float = 1e-6
    perceptual_weight: float = 0.0
    #: a RadCLIP folder (or ``zoo:`` name) whose frozen image tower gives the perceptual features
    perceptual_tower: str | None = None


@dataclass
class AutoencoderExperiment:
    data: AutoencoderDataConfig = field(default_factory=AutoencoderDataConfig)
    model: AutoencoderModelConfig = field(default_factory=AutoencoderModelConfig)
    loss: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/autoencoder", max_steps=2000,
                                                                   learning_rate=1e-3, eval_every=250,
                                                                   warmup_steps=20))


class ImagesOnly(Dataset):
    """The images of one split, (1, S, S) in [-1, 1], as ``{"image": ...}`` items (no labeler pass).

    With ``preload`` every image is decoded once into memory (4 bytes a pixel: 177 MB for 10,800
    images of 64 px), so training steps do not pay for PNG decoding again every epoch.
    """

    def __init__(self, annotation: str, split: str, image_size: int, image_root: str | None = None,
                 preload: bool = False, allow_outside_root: bool = False) -> None:
        self.base = ReportImageDataset(annotation, split, image_root, image_size=image_size,
                                       allow_outside_root=allow_outside_root)
        self.images = torch.stack([self.base[i]["images"][0] for i in range(len(self.base))]) \
            if preload and len(self.base) else None

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index] if self.images is not None else self.base[index]["images"][0]}


def _image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def _ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of [0, 1] images (differentiable; torchmetrics, Gaussian window 7)."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    return ssim(a, b, data_range=1.0, kernel_size=7)


class AutoencoderLoss(nn.Module):
    """L1 + SSIM + gradient + perceptual + KL of one autoencoder pass; returns the named terms.

    Args:
        cfg: the weights (a term with weight 0 is neither computed nor logged, except L1 and KL).
        tower: the frozen image tower for the perceptual term (a callable mapping (B, 1, S, S) in [-1, 1] to
            features, e.g. :func:`_perceptual_tower`'s grid tokens), or None.
    """

    def __init__(self, cfg: AutoencoderLossConfig, tower: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.perceptual_weight > 0 and tower is None:
            raise ValueError("loss.perceptual_weight > 0 needs loss.perceptual_tower")
        self._tower = tower  # held outside the module tree: frozen, never saved

    def forward(self, recon: torch.Tensor, target: torch.Tensor, kl: torch.Tensor) -> dict[str, torch.Tensor]:
        """recon, target: (B, 1, S, S) in [-1, 1]; kl: (B,) KL of the posterior to N(0, I)."""
        cfg = self.cfg
        # 1. pixels
        l1 = F.l1_loss(recon, target)
        terms = {"l1": l1, "kl": kl.mean()}
        loss = cfg.l1_weight * l1 + cfg.kl_weight * terms["kl"]
        # 2. local structure, on [0, 1] images as SSIM is defined
        if cfg.ssim_weight > 0:
            terms["ssim"] = 1.0 - _ssim((recon + 1) / 2, (target + 1) / 2)
            loss = loss + cfg.ssim_weight * terms["ssim"]
        # 3. edges: thin lines are mostly gradient
        if cfg.gradient_weight > 0:
            (rx, ry), (tx, ty) = _image_gradients(recon), _image_gradients(target)
            terms["gradient"] = F.l1_loss(rx, tx) + F.l1_loss(ry, ty)
            loss = loss + cfg.gradient_weight * terms["gradient"]
        # 4. what a trained image tower sees
        if cfg.perceptual_weight > 0 and self._tower is not None:
            terms["perceptual"] = F.l1_loss(self._tower(recon), self._tower(target).detach())
            loss = loss + cfg.perceptual_weight * terms["perceptual"]
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}


def _perceptual_tower(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from shared.backbone.clip import RadCLIP

    backbone = RadCLIP.from_pretrained(name).eval().requires_grad_(False)

    def features(x: torch.Tensor) -> torch.Tensor:
        """images (B, 1, S, S) in [-1, 1] -> the tower's grid tokens (B, L, W): local features, not the pooled
        embedding, so that where a line or nodule is drawn matters."""
        if x.shape[-1] != backbone.image_size:
            x = F.interpolate(x, size=(backbone.image_size,) * 2, mode="bilinear", align_corners=False)
        return backbone.encode_image(x)[1]

    return features


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Encode -> decode (posterior mean) of images (N, 1, S, S) in [-1, 1]; the result clamped to [-1, 1]."""
    return torch.cat([vae.decode(vae.encode(b.to(vae.device, vae.dtype)).latent_dist.mean).sample.clamp(-1, 1)
                      for b in images.split(batch_size)])


@torch.no_grad()
def reconstruction_scores(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Mean PSNR (dB, capped at 100) and SSIM (:mod:`shared.metrics.image`) of :func:`reconstruct` on images
    (N, 1, S, S) in [-1, 1], both on the [0, 1] scale."""
    a = (reconstruct(vae, images, batch_size).float() + 1) / 2
    b = (images.to(a.device).float() + 1) / 2
    return {"psnr": float(psnr(a, b).mean()), "ssim": float(ssim_map(a, b).flatten(1).mean(1).mean())}


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """1 / std of the posterior means of ``images`` (N, 1, S, S): the latents' ``scaling_factor``."""
    latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean
    return float(1.0 / latents.std().clamp_min(1e-6))


#: weights that make an autoencoder's latents: what a decoder-only fine-tune leaves untouched
ENCODER_PREFIXES = ("encoder.", "quant_conv.")


def latent_space_mismatch(reference: AutoencoderKL, candidate: AutoencoderKL) -> str | None:
    """Why ``candidate`` does not encode exactly as ``reference`` (a UNet trained on ``reference``'s latents
    would not fit it), or None when it does: the class, latent channels, scaling factor and every encoder and
    ``quant_conv`` tensor must be equal (compared in float32, so an fp16 file matches its float32 copy). A
    decoder-only fine-tune (``model.decoder_only``) passes."""
    if type(reference) is not type(candidate):
        return f"a {type(candidate).__name__}, not a {type(reference).__name__}"
    for key in ("latent_channels", "scaling_factor"):
        if reference.config.get(key) != candidate.config.get(key):
            return f"{key} {candidate.config.get(key)!r} differs from {reference.config.get(key)!r}"
    ref, cand = ({k: v for k, v in vae.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
                 for vae in (reference, candidate))
    differ = sorted(k for k in ref.keys() | cand.keys() if k not in ref or k not in cand
                    or not torch.equal(ref[k].float().cpu(), cand[k].float().cpu()))
    if differ:
        return f"the encoder differs ({len(differ)} tensors, e.g. {differ[0]})"
    return None


def fit_autoencoder(vae: AutoencoderKL, train_ds: Dataset, val_images: torch.Tensor | None,
                    loss_cfg: AutoencoderLossConfig, tcfg: TrainConfig, batch_size: int, num_workers: int = 0,
                    decoder_only: bool = False) -> TrainResult:
    """Train ``vae`` on ``{"image": ...}`` items; select by validation PSNR when ``val_images`` are given;
    then write ``scaling_factor`` into the saved ``best`` and ``final`` folders (with ``decoder_only``, only the
    decoder learns and ``vae``'s own ``scaling_factor`` is kept: the latents do not change)."""
    if decoder_only:
        # the posterior (encoder + quant_conv) is frozen; post_quant_conv and the decoder learn
        vae.encoder.requires_grad_(False)
        if getattr(vae, "quant_conv", None) is not None:
            vae.quant_conv.requires_grad_(False)
    tower = _perceptual_tower(loss_cfg.perceptual_tower) if loss_cfg.perceptual_weight > 0 else None
    objective = AutoencoderLoss(loss_cfg, tower)

    def loss_fn(m: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        posterior = m.encode(batch["image"]).latent_dist
        recon = m.decode(posterior.sample()).sample
        return objective(recon, batch["image"], posterior.kl())

    eval_fn = None if val_images is None else (lambda m: reconstruction_scores(m, val_images))
    loader = training_loader(train_ds, batch_size, tcfg.seed, collate_samples, num_workers)
    result = Trainer(vae, loader, loss_fn, tcfg, eval_fn=eval_fn, select_metric="psnr" if eval_fn else None,
                     select_mode="max").train()
    # 1 / std of the latents of (up to) 256 training images, so the UNet sees unit-variance latents
    sample = torch.stack([train_ds[i]["image"] for i in range(min(256, len(train_ds)))])
    out = Path(tcfg.output_dir)
    for name in ("best", "final"):
        if (out / name).is_dir():
            saved = AutoencoderKL.from_pretrained(out / name)
            scale = vae.config.scaling_factor if decoder_only else latent_scale(saved, sample)
            saved.register_to_config(scaling_factor=scale)
            saved.save_pretrained(out / name)
    return result


@TRAINERS.register("autoencoder", help="latent-diffusion autoencoder (L1 + SSIM + gradient + KL), selected by PSNR",
                   meta={"experiment": AutoencoderExperiment, "metric": "psnr"})
def train_autoencoder(cfg: AutoencoderExperiment) -> TrainResult:
    # seed before any model is built: its initial weights must not depend on what ran before in this process
    seed_everything(cfg.train.seed)
    if cfg.model.decoder_only and not cfg.model.init_from:
        raise ValueError("model.decoder_only needs model.init_from (the trained autoencoder whose decoder learns)")
    ldm = load_ldm_config(cfg.model.name)
    size = int(ldm["image_size"])
    train_ds = ImagesOnly(cfg.data.annotation, "train", size, cfg.data.image_root, preload=True,
                          allow_outside_root=cfg.data.allow_outside_root)
    if len(train_ds) == 0:
        raise ValueError(f"{cfg.data.annotation} has no training studies")
    val_ds = ImagesOnly(cfg.data.annotation, "val", size, cfg.data.image_root,
                        allow_outside_root=cfg.data.allow_outside_root)
    n_val = min(cfg.data.val_samples, len(val_ds))
    val_images = torch.stack([val_ds[i]["image"] for i in range(n_val)]) if n_val else None
    if cfg.model.init_from:
        start = Path(resolve_zoo(cfg.model.init_from))
        if not (start / "config.json").is_file():
            raise FileNotFoundError(f"model.init_from {cfg.model.init_from}: no saved autoencoder in {start}")
        vae = AutoencoderKL.from_pretrained(start)
        if vae.config.sample_size != size:
            raise ValueError(f"model.init_from {cfg.model.init_from}: an autoencoder for {vae.config.sample_size} px, "
                             f"but {cfg.model.name} is {size} px")
    else:
        vae = build_autoencoder(ldm)
    return fit_autoencoder(vae, train_ds, val_images, cfg.loss, cfg.train, cfg.data.batch_size,
                           cfg.data.num_workers, decoder_only=cfg.model.decoder_only)
