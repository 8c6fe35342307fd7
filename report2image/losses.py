"""The latent-diffusion objective as a module returning its named terms (open_clip ``loss.py`` style).

:class:`DiffusionLoss` takes what one UNet forward pass produced and returns
``{"loss": total, "diffusion": ..., "kept": ..., "refiner": ..., "group": ..., "independence": ...}``
(the last three when their part of the model is on), so training, logging and ablations read
the same dictionary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .conditioning import ConditionOutput, group_supervision_loss, independence_loss
from .noise_filter import LatentNoiseFilter

__all__ = ["DiffusionLoss", "REGION_MODES"]

#: how ``region_weight`` weighs a region: per latent cell, or per region whatever its area
REGION_MODES = ("cell", "area")


class DiffusionLoss(nn.Module):
    """Denoising MSE, weighted by Diff-CXR's noise filter, plus the conditioning's auxiliary terms.

    Args:
        refiner_weight: weight of the vision-aware text refiner's alignment loss.
        group_weight, independence_weight: weights of the causal disentanglement terms (identity
            codes of one patient agree; identity and pathology codes are independent).
        noise_filter: Diff-CXR's running anomaly scores over the training set; it is updated from
            the conditioned samples of each batch and turns them into per-sample weights. It is
            held here (not looked up inside a possibly wrapped model) so that the objective works
            the same under ``accelerate``'s DDP wrapper.
        region_weight, region_mode: extra weight of the denoising error inside a study's region mask (where its
            finding is). ``"cell"``: each latent cell's squared error counts ``1 + region_weight`` times inside,
            once elsewhere (a large region, a pneumothorax, weighs its study up more than a rib step-off does);
            ``"area"``: the region's mean error is added ``region_weight`` times to the study's, whatever its
            size (every masked study weighs ``1 + region_weight``, the thinnest finding as much as the largest).
    """

    def __init__(self, refiner_weight: float = 0.1, group_weight: float = 0.05, independence_weight: float = 0.05,
                 noise_filter: LatentNoiseFilter | None = None, region_weight: float = 0.0,
                 region_mode: str = "cell") -> None:
        super().__init__()
        if region_mode not in REGION_MODES:
            raise ValueError(f"loss.region_mode must be one of {REGION_MODES}, got {region_mode!r}")
        self.refiner_weight, self.group_weight = refiner_weight, group_weight
        self.independence_weight = independence_weight
        self.noise_filter = noise_filter
        self.region_weight, self.region_mode = region_weight, region_mode

    def forward(self, pred: torch.Tensor, target: torch.Tensor, index: torch.Tensor, timesteps: torch.Tensor,
                dropped: torch.Tensor, cond: ConditionOutput, refined: tuple[torch.Tensor, torch.Tensor] | None,
                patient_ids: Sequence[str], labels: torch.Tensor, snr_weights: torch.Tensor | None = None,
                region: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Terms of one batch.

        Args:
            pred, target: the UNet's prediction and its target (B, C, h, w).
            index: (B,) training-set index of each sample (the noise filter's rows).
            timesteps: (B,) diffusion timesteps; dropped: (B,) bool, condition dropped for CFG.
            cond: the conditioner's output (identity and pathology codes when disentangling).
            refined: (alignment loss, (B,) report-image cosine) of the vision-aware refiner, or None.
            patient_ids: (B,) patient of each sample; labels: (B, 14) the labeler's findings.
            snr_weights: (B,) Min-SNR-gamma weights of the timesteps, or None (uniform).
            region: (B, 1, h, w) region masks in {0, 1} at the latents' size, or None (no region weighting).
        """
        # 1. per-sample denoising error
        squared = F.mse_loss(pred.float(), target.float(), reduction="none")
        per_sample = squared.mean((1, 2, 3))
        # 2. Diff-CXR noise filtering: anomaly scores from the conditioned samples, then weights
        weights = torch.ones_like(per_sample)
        if self.noise_filter is not None:
            kept = ~dropped
            self.noise_filter.update(index[kept], timesteps[kept], per_sample[kept],
                                     None if refined is None else refined[1][kept])
            weights = self.noise_filter.weights(index).to(per_sample.device)
        # the filter compares raw errors per timestep; Min-SNR and the region masks only reweight what is optimised
        weighted = per_sample
        if region is not None and self.region_weight > 0:
            weighted = per_sample + self.region_weight * self._region_error(squared, region.to(squared))
        if snr_weights is not None:
            weighted = weighted * snr_weights.to(per_sample)
        diffusion = (weights * weighted).sum() / weights.sum().clamp_min(1.0)
        terms = {"diffusion": diffusion, "kept": weights.mean()}
        loss = diffusion
        # 3. the vision-aware refiner's report-image alignment
        if refined is not None:
            terms["refiner"] = refined[0]
            loss = loss + self.refiner_weight * refined[0]
        # 4. causal disentanglement of identity and pathology
        if cond.identity is not None:
            terms["group"] = group_supervision_loss(cond.identity, cond.pathology, patient_ids, labels)
            terms["independence"] = independence_loss(cond.identity, cond.pathology)
            loss = loss + self.group_weight * terms["group"] + self.independence_weight * terms["independence"]
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}

    def _region_error(self, squared: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """(B,) the squared error inside each region (B, 1, h, w): its sum over all cells ("cell"; the
        weighted total's extra part) or its mean over the region's cells ("area"; 0 for an empty mask)."""
        inside = (squared * region).sum((1, 2, 3))
        if self.region_mode == "cell":
            return inside / squared[0].numel()
        cells = (region.sum((1, 2, 3)) * squared.shape[1]).clamp_min(1.0)
        return inside / cells
