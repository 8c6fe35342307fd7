"""``radloop train diffusion``: the autoencoder, then the conditioned UNet (DDPM training).

Stage 1 trains a diffusers ``AutoencoderKL`` on the training images (L1 + KL) unless
``model.autoencoder`` names a saved one, and sets its ``scaling_factor`` to 1 / std of the latents.
Stage 2 trains the UNet and the :class:`~report2image.conditioning.ReportConditioner` on the
frozen backbone's text token features with classifier-free condition dropout, and, switchable:

* Diff-CXR latent noise filtering (:class:`~report2image.noise_filter.LatentNoiseFilter`);
* Diff-CXR vision-aware textual learning (the refiner's alignment to the backbone's image embedding);
* causal disentanglement: identity tokens from *another study of the same patient*, group
  supervision and the independence penalty.

Selection: the denoising loss on a fixed validation subset (fixed noise and timesteps). The
saved folders (``best``, ``final``) are complete ``ReportToCXRPipeline`` folders.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr
from torch import nn

from shared.backbone.clip import RadCLIP, build_backbone
from shared.data.balance import finding_balance_weights, sampled_shares
from shared.data.config import DataConfig
from shared.data.dataset import collate_samples
from shared.io import atomic_write_text
from shared.labels import CHEXPERT_LABELS
from shared.text.labeler import ReportLabeler
from shared.text.tokenizer import ReportTokenizer
from shared.training import TRAINERS, TrainConfig, Trainer, TrainResult, seed_everything, training_loader
from shared.training.loop import save_folder_atomically
from shared.zoo import resolve_zoo

from .autoencoder import AutoencoderLossConfig, ImagesOnly, fit_autoencoder
from .conditioning import ConditionOutput, ReportConditioner
from .data import CachedPairs, DiffusionPairs
from .losses import REGION_MODES, DiffusionLoss
from .models import build_autoencoder, build_unet, load_ldm_config
from .noise_filter import LatentNoiseFilter
from .pipeline import ReportToCXRPipeline, backbone_text_features

logger = logging.getLogger(__name__)

__all__ = ["DiffusionExperiment", "train_diffusion", "DiffusionPairs", "LatentDiffusionModel",
           "noise_scheduler", "CachedPairs", "training_target", "min_snr_weights", "TextEncoderSwapExperiment",
           "swap_text_encoder", "check_text_encoder_swap"]


@dataclass
class DiffusionDataConfig(DataConfig):
    #: validation studies whose denoising loss selects the checkpoint
    val_samples: int = 64
    #: a folder for the frozen models' outputs as memory-mapped shards, computed once by every process
    #: (None: in memory, as for small data); see :class:`CachedPairs`
    feature_cache: str | None = None
    #: rare-aware sampling of training pairs (:mod:`shared.data.balance`): 0 the natural mix, 1 every finding
    #: (a study's rarest, by the labeler's reading of its report) drawn about equally often, 0.5 square-root
    finding_balance: float = 0.0
    #: a region masks file (:mod:`shared.data.region_masks`; ``radloop data finding-masks`` writes SynthCXR's):
    #: where each training study's finding is, for ``loss.region_weight``
    region_masks: str | None = None


@dataclass
class DiffusionModelConfig:
    name: str = "ldm_small"
    #: a trained RadCLIP folder (``radloop train backbone``); None builds an untrained radclip_tiny
    #: on the training reports (for tests only: its token features carry little meaning)
    backbone: str | None = None
    #: a saved diffusers AutoencoderKL folder or ``zoo:`` name (``radloop train autoencoder``); None trains
    #: one (stage 1)
    autoencoder: str | None = None
    use_refiner: bool = True
    use_attributes: bool = True
    use_identity: bool = True


@dataclass
class DiffusionLossConfig:
    cond_drop_prob: float = 0.1
    refiner_weight: float = 0.1
    group_weight: float = 0.05
    independence_weight: float = 0.05
    noise_filter: bool = True
    filter_z: float = 3.0
    #: what marks an anomaly: "loss" (denoising loss above its timestep's), "alignment" (the
    #: vision-aware refiner keeps the report and image apart), or "both" (either)
    filter_signal: str = "both"
    #: steps before the filter drops anything (then it ramps in over as many)
    filter_warmup: int = 100
    #: what the UNet predicts: "epsilon" (the noise) or "v_prediction" (Salimans & Ho's velocity);
    #: saved in the pipeline's scheduler config, so samplers and inversion read it
    prediction_type: str = "epsilon"
    #: Min-SNR-gamma loss weighting (Hang et al. 2023): each timestep's loss weighted by
    #: min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v); None: uniform
    snr_gamma: float | None = None
    #: extra weight of the denoising error inside the region masks (``data.region_masks``): a finding a few
    #: pixels wide, a rib step-off, is otherwise a hundredth of a study's loss; 0: off
    region_weight: float = 0.0
    #: "cell" (each latent cell inside counts 1 + region_weight times) or "area" (the region's mean error added
    #: region_weight times: a rib step-off weighs as much as a pneumothorax); see DiffusionLoss
    region_mode: str = "cell"


@dataclass
class AutoencoderTrainConfig(AutoencoderLossConfig):
    """Stage 1 inside ``radloop train diffusion`` when no ``model.autoencoder`` is given: the loss weights of
    ``radloop train autoencoder`` (the same :class:`~report2image.autoencoder.AutoencoderLossConfig`) plus its
    length; the same :func:`~report2image.autoencoder.fit_autoencoder` trains it, without validation."""

    steps: int = 300
    learning_rate: float = 1e-3
    batch_size: int = 32


@dataclass
class DiffusionExperiment:
    data: DiffusionDataConfig = field(default_factory=DiffusionDataConfig)
    model: DiffusionModelConfig = field(default_factory=DiffusionModelConfig)
    loss: DiffusionLossConfig = field(default_factory=DiffusionLossConfig)
    autoencoder: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/diffusion", max_steps=2000,
                                                                   learning_rate=2e-4, eval_every=250,
                                                                   warmup_steps=50))


PREDICTION_TYPES = ("epsilon", "v_prediction")


def noise_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """The training noise schedule (Stable Diffusion's scaled-linear betas, no sample clipping in latent space)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"loss.prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, clip_sample=False, prediction_type=prediction_type)


def training_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
                    ) -> torch.Tensor:
    """What the UNet is trained to output for ``scheduler.config.prediction_type`` (same shape as latents)."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    return noise


def min_snr_weights(scheduler: DDPMScheduler, t: torch.Tensor, gamma: float | None) -> torch.Tensor | None:
    """(B,) Min-SNR-gamma loss weights of timesteps ``t``, or None when ``gamma`` is None."""
    if gamma is None:
        return None
    snr = compute_snr(scheduler, t)  # diffusers': alpha_t^2 / sigma_t^2
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1.0) if scheduler.config.prediction_type == "v_prediction" else clipped / snr


def _fit_stage1(vae: AutoencoderKL, cfg: DiffusionExperiment, size: int) -> AutoencoderKL:
    """Stage 1: :func:`report2image.autoencoder.fit_autoencoder` on this recipe's training images with the
    ``autoencoder`` section's weights; returns the ``final`` autoencoder with its ``scaling_factor``."""
    ae, out = cfg.autoencoder, Path(cfg.train.output_dir) / "autoencoder"
    tcfg = TrainConfig(output_dir=str(out), max_steps=ae.steps, learning_rate=ae.learning_rate,
                       eval_every=ae.steps, checkpoint_every=ae.steps, log_every=max(ae.steps // 5, 1),
                       warmup_steps=min(20, ae.steps // 10), seed=cfg.train.seed)
    images = ImagesOnly(cfg.data.annotation, "train", size, cfg.data.image_root,
                        allow_outside_root=cfg.data.allow_outside_root)
    fit_autoencoder(vae, images, None, ae, tcfg, ae.batch_size)
    return AutoencoderKL.from_pretrained(out / "final")


# -- stage 2: UNet + conditioner ----------------------------------------------------------
class LatentDiffusionModel(nn.Module):
    """What stage 2 trains (UNet, conditioner, noise-filter state) behind one ``forward``, so that
    DDP sees every trainable parameter; ``save_pretrained`` writes a complete pipeline folder
    with the frozen autoencoder and backbone."""

    def __init__(self, unet: UNet2DConditionModel, conditioner: ReportConditioner, vae: AutoencoderKL,
                 text_encoder: RadCLIP, noise_filter: LatentNoiseFilter | None, bank_images: torch.Tensor,
                 prediction_type: str = "epsilon") -> None:
        super().__init__()
        self.unet, self.conditioner, self.noise_filter = unet, conditioner, noise_filter
        self.prediction_type = prediction_type
        # Frozen parts are held outside the module tree: not trained, not in the checkpoints.
        self._frozen = (vae, text_encoder)
        self._bank_images = bank_images

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                attributes: torch.Tensor | None, identity_images: torch.Tensor | None, drop: torch.Tensor,
                image_embeds: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, ConditionOutput, tuple[torch.Tensor, torch.Tensor] | None]:
        """noisy latents (B, C, s, s), timesteps (B,) -> (predicted noise, conditioning,
        (refiner loss, per-pair report-image cosine) or None)."""
        # 1. conditioning (condition dropout for classifier-free guidance inside)
        cond = self.conditioner(text_tokens, text_mask, attributes, identity_images, drop=drop)
        # 2. noise prediction
        pred = self.unet(noisy, timesteps, encoder_hidden_states=cond.hidden_states,
                         encoder_attention_mask=cond.mask).sample
        # 3. Diff-CXR vision-aware textual learning: gated report embedding vs the image embedding
        align = None
        if image_embeds is not None and cond.gate is not None:
            align = self.conditioner.refiner.alignment_loss(text_tokens, cond.gate, image_embeds)
        return pred, cond, align

    def save_pretrained(self, folder: str | Path) -> None:
        vae, text_encoder = self._frozen
        prediction_type = self.prediction_type
        if self.conditioner.config.use_identity:  # without identity tokens there is no bank to fill
            self.conditioner.fill_identity_bank(self._bank_images.to(next(self.unet.parameters()).device))
        scheduler = DDIMScheduler.from_config(noise_scheduler(prediction_type).config, set_alpha_to_one=False,
                                              steps_offset=1)
        ReportToCXRPipeline(vae, self.unet, scheduler, text_encoder, self.conditioner).save_pretrained(folder)


def _load_backbone(name: str | None, train_reports: list[str]) -> RadCLIP:
    if name is None:
        logger.warning("model.backbone is not set: using an untrained radclip_tiny text tower (tests only)")
        return build_backbone("radclip_tiny", ReportTokenizer.fit(train_reports, min_freq=1))
    backbone = RadCLIP.from_pretrained(name)
    if backbone.tokenizer is None:
        raise FileNotFoundError(f"{name} has no report_tokenizer.json beside the weights")
    return backbone


@TRAINERS.register("diffusion", help="latent diffusion report -> CXR (autoencoder, then UNet + conditioner)",
                   meta={"experiment": DiffusionExperiment, "metric": "denoising loss"})
def train_diffusion(cfg: DiffusionExperiment) -> TrainResult:
    data, mcfg, lcfg, tcfg = cfg.data, cfg.model, cfg.loss, cfg.train
    # seed before any model is built: its initial weights must not depend on what ran before in this process
    seed_everything(tcfg.seed)
    ldm = load_ldm_config(mcfg.name)
    labeler = ReportLabeler()
    _check_regions(data, lcfg)
    train_ds = DiffusionPairs(data.annotation, "train", int(ldm["image_size"]), labeler, data.image_root,
                              data.allow_outside_root, data.region_masks)
    if len(train_ds) == 0:
        raise ValueError(f"{data.annotation} has no training studies")
    val_ds = DiffusionPairs(data.annotation, "val", int(ldm["image_size"]), labeler, data.image_root,
                            data.allow_outside_root)
    out = Path(tcfg.output_dir)

    # 1. frozen parts: the backbone and the autoencoder (trained here unless given)
    backbone = _load_backbone(mcfg.backbone, train_ds.base.reports).eval().requires_grad_(False)
    vae = _autoencoder(cfg, ldm).eval().requires_grad_(False)
    # 2. what is trained: UNet, conditioner, noise-filter state
    conditioner = ReportConditioner(text_width=backbone.text_width, embed_dim=backbone.embed_dim,
                                    use_refiner=mcfg.use_refiner, use_attributes=mcfg.use_attributes,
                                    use_identity=mcfg.use_identity, **ldm["conditioner"])
    scheduler = noise_scheduler(lcfg.prediction_type)
    nfilter = LatentNoiseFilter(len(train_ds), scheduler.config.num_train_timesteps, z=lcfg.filter_z,
                                warmup_steps=lcfg.filter_warmup,
                                signal=lcfg.filter_signal if mcfg.use_refiner else "loss") \
        if lcfg.noise_filter else None
    # 3. the frozen models' outputs, once: latent distributions, text tokens, image embeddings
    cached = CachedPairs(train_ds, vae, backbone, image_embeds=mcfg.use_refiner, cache_dir=data.feature_cache)
    bank = cached.identity_images(train_ds.partner[: min(64, len(train_ds))])
    model = LatentDiffusionModel(build_unet(ldm), conditioner, vae, backbone, nfilter, bank, lcfg.prediction_type)
    objective = DiffusionLoss(lcfg.refiner_weight, lcfg.group_weight, lcfg.independence_weight, nfilter,
                              lcfg.region_weight, lcfg.region_mode)
    # 4. the training step and the validation score
    loss_fn = _unet_step(scheduler, float(vae.config.scaling_factor), objective, mcfg, lcfg)
    eval_fn = _denoising_validation(val_ds, data.val_samples, vae, backbone, scheduler, mcfg)
    loader = training_loader(cached, data.batch_size, tcfg.seed, collate_samples, data.num_workers,
                             _balance_weights(train_ds.labels.numpy(), data.finding_balance))
    result = Trainer(model, loader, loss_fn, tcfg, eval_fn=eval_fn, select_metric="denoising_loss",
                     select_mode="min").train()
    if nfilter is not None:
        _write_filter_report(nfilter, train_ds, out)
    return result


def _check_regions(data: DiffusionDataConfig, lcfg: DiffusionLossConfig) -> None:
    """Region masks and their loss weight come together: either alone is a configuration mistake."""
    if lcfg.region_mode not in REGION_MODES:
        raise ValueError(f"loss.region_mode must be one of {REGION_MODES}, got {lcfg.region_mode!r}")
    if lcfg.region_weight < 0:
        raise ValueError(f"loss.region_weight must be >= 0, got {lcfg.region_weight}")
    if lcfg.region_weight > 0 and not data.region_masks:
        raise ValueError(f"loss.region_weight is {lcfg.region_weight} but data.region_masks is not set: "
                         "there is no region to weight")
    if data.region_masks and lcfg.region_weight == 0:
        raise ValueError(f"data.region_masks is {data.region_masks} but loss.region_weight is 0: the masks would "
                         "not be used")


def _balance_weights(labels: np.ndarray, power: float) -> np.ndarray | None:
    """Sampling weights of the training pairs for ``data.finding_balance`` (None: shuffle as usual)."""
    if power == 0:
        return None
    weights = finding_balance_weights(labels, power)
    logger.info("finding-balanced sampling (power %s): expected share of drawn studies per finding %s", power,
                sampled_shares(labels, weights, CHEXPERT_LABELS))
    return weights


def _autoencoder(cfg: DiffusionExperiment, ldm: dict[str, Any]) -> AutoencoderKL:
    """The given autoencoder, the one an earlier run of this folder trained, or a new one trained now."""
    out = Path(cfg.train.output_dir)
    if cfg.model.autoencoder:
        return AutoencoderKL.from_pretrained(resolve_zoo(cfg.model.autoencoder))
    if (out / "autoencoder" / "final").is_dir():
        logger.info("reusing the autoencoder in %s", out / "autoencoder" / "final")
        return AutoencoderKL.from_pretrained(out / "autoencoder" / "final")
    return _fit_stage1(build_autoencoder(ldm), cfg, int(ldm["image_size"]))


def _unet_step(scheduler: DDPMScheduler, scaling_factor: float, objective: DiffusionLoss,
               mcfg: DiffusionModelConfig, lcfg: DiffusionLossConfig) -> Callable[[nn.Module, dict[str, Any]], dict]:
    """The loss function of one UNet training batch (cached latents, tokens and embeddings)."""
    T = scheduler.config.num_train_timesteps

    def loss_fn(m: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        mean = batch["latent_mean"]
        device, b = mean.device, len(mean)
        # 1. a latent drawn from the autoencoder's posterior
        latents = (mean + batch["latent_std"] * torch.randn_like(mean)) * scaling_factor
        # 2. DDPM: noise at a random timestep, condition dropped with cond_drop_prob
        noise = torch.randn_like(latents)
        t = torch.randint(0, T, (b,), device=device)
        noisy = scheduler.add_noise(latents, noise, t)
        drop = torch.rand(b, device=device) < lcfg.cond_drop_prob
        pred, cond, refined = m(noisy, t, batch["tokens"], batch["mask"],
                                batch["attributes"] if mcfg.use_attributes else None,
                                batch["identity_image"] if mcfg.use_identity else None, drop,
                                batch.get("image_embeds"))
        # 3. the objective's named terms (noise filtering, Min-SNR weights, refiner, disentanglement)
        return objective(pred, training_target(scheduler, latents, noise, t), batch["index"], t, drop, cond, refined,
                         batch["patient_id"], batch["labels"], min_snr_weights(scheduler, t, lcfg.snr_gamma),
                         batch.get("region"))

    return loss_fn


def _denoising_validation(val_ds: DiffusionPairs, val_samples: int, vae: AutoencoderKL, backbone: RadCLIP,
                          scheduler: DDPMScheduler, mcfg: DiffusionModelConfig
                          ) -> Callable[[nn.Module], dict[str, float]]:
    """Denoising loss on a fixed validation subset with fixed noise and timesteps (the frozen
    models' part is computed once here)."""
    n_val = min(val_samples, len(val_ds))
    if n_val == 0:
        return lambda m: {"denoising_loss": float("nan")}
    val_batch = collate_samples([val_ds[i] for i in range(n_val)])
    val_t = torch.randint(0, scheduler.config.num_train_timesteps, (n_val,),
                          generator=torch.Generator().manual_seed(1234))
    with torch.no_grad():
        val_latents = vae.encode(val_batch["image"]).latent_dist.mean * float(vae.config.scaling_factor)
        val_tokens, val_mask = backbone_text_features(backbone, val_batch["report"], torch.device("cpu"))
    val_noise = torch.randn(val_latents.shape, generator=torch.Generator().manual_seed(4321))
    val_noisy = scheduler.add_noise(val_latents, val_noise, val_t)
    val_target = training_target(scheduler, val_latents, val_noise, val_t)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        device = next(m.parameters()).device
        pred, _, _ = m(val_noisy.to(device), val_t.to(device), val_tokens.to(device), val_mask.to(device),
                       val_batch["attributes"].to(device) if mcfg.use_attributes else None,
                       val_batch["identity_image"].to(device) if mcfg.use_identity else None,
                       torch.zeros(n_val, dtype=torch.bool, device=device))
        return {"denoising_loss": float(F.mse_loss(pred, val_target.to(device)))}

    return eval_fn


def _write_filter_report(nfilter: LatentNoiseFilter, ds: DiffusionPairs, out: Path) -> None:
    """``noise_filter.json``: the study ids the filter flagged, with their anomaly scores."""
    flagged = nfilter.flagged()
    ids = [rec["id"] for rec in ds.base.records]
    seen = [i for i in range(len(ids)) if nfilter.seen[i] > 0]
    payload = {"signal": nfilter.signal, "flagged": [ids[i] for i in flagged.nonzero().flatten().tolist()],
               "scores": {ids[i]: round(float(nfilter.score[i]), 4) for i in seen},
               "alignment_scores": {ids[i]: round(float(nfilter.align_score[i]), 4) for i in seen}}
    atomic_write_text(out / "noise_filter.json", json.dumps(payload, indent=1) + "\n")


@dataclass
class TextEncoderSwapExperiment:
    """A trained pipeline with another text encoder: nothing is trained (``train.output_dir`` receives
    ``best/`` and ``final/``, the same folder, so the zoo exports it like any run)."""

    pipeline: str = "zoo:ldm64"
    #: a RadCLIP with the pipeline text encoder's image tower and text widths (e.g. a text_align student of it)
    text_encoder: str = "zoo:radclip_small_iu"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/swap_text_encoder"))


def check_text_encoder_swap(old: RadCLIP, new: RadCLIP) -> None:
    """Raise a one-line ValueError unless ``new`` can replace ``old`` under a trained UNet and conditioner:
    the same text width, joint-embedding size and context length, and the same image tower (the
    conditioner's identity bank and refiner read image embeddings)."""
    for attr in ("text_width", "embed_dim", "context_length"):
        if getattr(old, attr) != getattr(new, attr):
            raise ValueError(f"the new text encoder's {attr} is {getattr(new, attr)}, the pipeline's "
                             f"{getattr(old, attr)}: the conditioner cannot read it")
    new_state = new.state_dict()
    for name, value in old.state_dict().items():
        if name.startswith("clip.text."):
            continue
        other = new_state.get(name)
        if other is None or other.shape != value.shape or not torch.allclose(other.float(), value.float(), atol=1e-3):
            raise ValueError(f"the new text encoder's image side differs from the pipeline's at '{name}': "
                             "swap only a text tower fine-tuned from the pipeline's own backbone")


@TRAINERS.register("swap_text_encoder", help="a trained report -> CXR pipeline with another compatible text encoder",
                   meta={"experiment": TextEncoderSwapExperiment, "metric": "none (nothing is trained)"})
def swap_text_encoder(cfg: TextEncoderSwapExperiment) -> TrainResult:
    pipe = ReportToCXRPipeline.from_pretrained(cfg.pipeline)
    encoder = RadCLIP.from_pretrained(cfg.text_encoder).eval()
    check_text_encoder_swap(pipe.text_encoder, encoder)
    pipe.register_modules(text_encoder=encoder)
    out = Path(cfg.train.output_dir)
    for name in ("best", "final"):
        save_folder_atomically(pipe.save_pretrained, out / name)
    atomic_write_text(out / "train_result.json", json.dumps(
        {"steps": 0, "best_metric": None, "best_step": None, "select_metric": None,
         "pipeline": cfg.pipeline, "text_encoder": cfg.text_encoder}, indent=1) + "\n")
    logger.info("%s with the text encoder of %s written to %s", cfg.pipeline, cfg.text_encoder, out)
    return TrainResult(steps=0, best_metric=None, best_step=None, output_dir=str(out))
