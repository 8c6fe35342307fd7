"""Counterfactual editing of :class:`~report2image.pipeline.ReportToCXRPipeline`: keep the patient, change the findings.

DDIM inversion under the source report, then denoising under the edited one; with a mask (DiffEdit's, from where
the model's predictions under the two reports differ, or a user's region) the image outside it stays the source's
(RadEdit). A mixin of the pipeline: it reads the pipeline's components and sampling defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler
from PIL import Image

from shared.data.image_processor import postprocess, preprocess

from .outputs import CounterfactualOutput

__all__ = ["CounterfactualEditingMixin"]


class CounterfactualEditingMixin:
    """:meth:`invert`, :meth:`edit_mask` and :meth:`counterfactual` of the report -> X-ray pipeline."""

    @torch.no_grad()
    def invert(self, images: torch.Tensor, reports: Sequence[str], num_inference_steps: int = 50,
               strength: float = 1.0, use_identity: bool = True, return_trajectory: bool = False
               ) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, list[torch.Tensor]]:
        """DDIM inversion of images (B, 1, S, S) in [-1, 1] under their own reports (no guidance).

        Returns the noised latents and the index into ``scheduler.timesteps`` from which sampling
        resumes: the last ``round(strength * num_inference_steps)`` denoising steps undo them. With
        ``return_trajectory``, also the latents after every inversion step, the clean latents first
        (``trajectory[k]`` is where the ``k``-th last denoising step should land).
        """
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        images = images.to(self.device, self.vae.dtype)
        latents = self.vae.encode(images).latent_dist.mean * self.vae.config.scaling_factor
        identity = images if self.conditioner.config.use_identity and use_identity else None
        codes = None
        if self.conditioner.config.use_identity and identity is None:
            codes = self.conditioner.identity_from_bank(len(reports), torch.Generator().manual_seed(0))
        cond = self.encode_reports(reports, identity, codes)
        inverse = DDIMInverseScheduler.from_config(self.scheduler.config)
        inverse.set_timesteps(num_inference_steps, device=self.device)
        steps = max(1, round(strength * num_inference_steps))
        trajectory = [latents]
        for t in inverse.timesteps[:steps]:
            out = self.unet(latents, t, encoder_hidden_states=cond.hidden_states,
                            encoder_attention_mask=cond.mask).sample
            latents = inverse.step(out, t, latents).prev_sample
            trajectory.append(latents)
        if return_trajectory:
            return latents, num_inference_steps - steps, trajectory
        return latents, num_inference_steps - steps

    @torch.no_grad()
    def edit_mask(self, images: torch.Tensor | Sequence[Image.Image], source_reports: str | Sequence[str],
                  new_reports: str | Sequence[str], strength: float = 0.5, num_maps: int = 8,
                  threshold_ratio: float = 3.0, dilate: int = 0, seed: int = 0) -> torch.Tensor:
        """Where the edit should act, DiffEdit's way: (B, 1, S, S) masks in {0, 1} at image size.

        The source latents are noised to ``strength`` of the schedule ``num_maps`` times; the model's
        predictions under the source and the new report differ where the finding that changes is
        drawn. The mean absolute difference (over channels and noise draws) is clipped at
        ``threshold_ratio`` times its image mean and scaled to [0, 1]; the mask is where it exceeds
        0.5, grown by ``dilate`` latent pixels so the finding's border is inside.
        """
        images = preprocess(images)
        source_reports, new_reports = self._report_lists(len(images), new_reports, source_reports)
        return self._edit_mask(images, source_reports, new_reports, strength, num_maps, threshold_ratio, dilate, seed)

    @torch.no_grad()
    def _edit_mask(self, images: torch.Tensor, source_reports: list[str], new_reports: list[str], strength: float,
                   num_maps: int, threshold_ratio: float, dilate: int, seed: int) -> torch.Tensor:
        """:meth:`edit_mask` of images (B, 1, S, S) already in [-1, 1]."""
        images = images.to(self.device, self.vae.dtype)
        latents = self.vae.encode(images).latent_dist.mean * self.vae.config.scaling_factor
        b = len(images)
        # both conditions for every noise draw: (2 * num_maps * B) rows, source half first
        src = self.encode_reports(source_reports, images if self.conditioner.config.use_identity else None)
        new = self.encode_reports(new_reports, images if self.conditioner.config.use_identity else None)
        t = torch.full((b,), int(strength * (self.scheduler.config.num_train_timesteps - 1)), device=self.device)
        generator = torch.Generator().manual_seed(seed)
        diff = torch.zeros_like(latents[:, :1])
        scale = torch.zeros(b, device=latents.device)
        for _ in range(num_maps):
            noise = torch.randn(latents.shape, generator=generator).to(latents)
            noisy = self.scheduler.add_noise(latents, noise, t)
            out = self.unet(torch.cat([noisy, noisy]), torch.cat([t, t]),
                            encoder_hidden_states=torch.cat([src.hidden_states, new.hidden_states]),
                            encoder_attention_mask=torch.cat([src.mask, new.mask])).sample
            a, c = out.chunk(2)
            diff += (c - a).abs().mean(1, keepdim=True) / num_maps
            scale += a.abs().mean(dim=(1, 2, 3)) / num_maps
        # differences at float rounding level (the same report: a batched UNet need not give bit-equal rows on
        # every CPU) are no difference; without this floor the normalisation below would blow them up to a mask
        diff = torch.where(diff > 1e-3 * scale.view(b, 1, 1, 1), diff, torch.zeros_like(diff))
        clip = diff.flatten(1).mean(1).view(b, 1, 1, 1) * threshold_ratio
        mask = (diff.clamp(max=clip) / clip.clamp_min(1e-12) > 0.5).float()
        if dilate > 0:
            mask = F.max_pool2d(mask, 2 * dilate + 1, stride=1, padding=dilate)
        return F.interpolate(mask, size=images.shape[-2:], mode="nearest")

    @staticmethod
    def _report_lists(n: int, new_reports: str | Sequence[str], source_reports: str | Sequence[str] | None
                      ) -> tuple[list[str], list[str]]:
        new_reports = [new_reports] if isinstance(new_reports, str) else list(new_reports)
        if source_reports is None:
            source_reports = ["No acute cardiopulmonary abnormality."] * len(new_reports)
        source_reports = [source_reports] if isinstance(source_reports, str) else list(source_reports)
        if not (n == len(new_reports) == len(source_reports)):
            raise ValueError(f"{n} images, {len(new_reports)} new reports and {len(source_reports)} "
                             "source reports: give one of each per image")
        return source_reports, new_reports

    @torch.no_grad()
    def counterfactual(self, images: torch.Tensor | Sequence[Image.Image], new_reports: str | Sequence[str],
                       source_reports: str | Sequence[str] | None = None, strength: float | None = None,
                       num_inference_steps: int | None = None, guidance_scale: float | None = None,
                       output_type: str = "pil",
                       mask: torch.Tensor | str | None = "auto", use_identity: bool = True, feather: int = 1,
                       mask_threshold_ratio: float = 3.0, mask_dilate: int = 0) -> CounterfactualOutput:
        """Keep the patient, change the findings.

        1. DDIM-invert ``images`` under their source reports to ``strength`` of the trajectory;
        2. denoise under ``new_reports`` (with the source image's identity tokens unless
           ``use_identity=False``);
        3. with a mask (RadEdit / DiffEdit), keep the source outside it: after every denoising step
           the latents outside the mask are replaced by the inversion's latents of that step, and
           the decoded image is blended with the source through the mask (feathered by ``feather``
           pixels), so pixels outside it are the source's.

        Args:
            images: PIL images or [0, 1] tensors (B, 1, S, S), as :func:`preprocess` takes them.
            strength, num_inference_steps, guidance_scale: None, the pipeline's ``edit_*`` sampling defaults.
            source_reports: default "No acute cardiopulmonary abnormality." (the inversion only
                needs a plausible description; the true one inverts more faithfully).
            mask: ``"auto"`` (:meth:`edit_mask`), a (B, 1, S, S) tensor with 1 where the edit may
                act (a user's region), or None (plain inversion: the whole image is regenerated).
            mask_threshold_ratio, mask_dilate: ``threshold_ratio`` and ``dilate`` of the ``"auto"`` mask
                (:meth:`edit_mask`): a larger ratio or no dilation gives a tighter mask, which keeps more of
                the source and may leave part of the finding outside it. No dilation was chosen on zoo:ldm64's
                validation edits (``benchmarks/edit_tuning.py``): SSIM outside the edit 0.90 -> 0.97 at the
                same flip rate.
        """
        images = preprocess(images)
        source_reports, new_reports = self._report_lists(len(images), new_reports, source_reports)
        sampling = self.sampling
        strength = sampling.edit_strength if strength is None else float(strength)
        guidance_scale = sampling.edit_guidance_scale if guidance_scale is None else float(guidance_scale)
        num_inference_steps = sampling.edit_num_inference_steps if num_inference_steps is None else num_inference_steps
        mask = self._resolve_mask(mask, images, source_reports, new_reports, mask_threshold_ratio, mask_dilate)
        latents = self._edit_latents(images, source_reports, new_reports, mask, strength, num_inference_steps,
                                     guidance_scale, use_identity)
        decoded = self._decode(latents)
        if mask is not None:
            soft = mask
            if feather > 0:
                # a ramp over the `feather` pixels just outside the mask; inside it stays 1
                soft = torch.maximum(F.avg_pool2d(mask, 2 * feather + 1, 1, feather, count_include_pad=False), mask)
            source = images.to(decoded.device, decoded.dtype)
            decoded = soft * decoded + (1 - soft) * source
        return CounterfactualOutput(postprocess(decoded, output_type), latents, mask)

    def _resolve_mask(self, mask: torch.Tensor | str | None, images: torch.Tensor, source_reports: list[str],
                      new_reports: list[str], threshold_ratio: float, dilate: int) -> torch.Tensor | None:
        """The edit region (B, 1, S, S) as :meth:`counterfactual` takes ``mask``: ``"auto"`` computed, a tensor
        checked, None kept."""
        if isinstance(mask, str):
            if mask != "auto":
                raise ValueError(f"mask must be 'auto', a tensor or None, got {mask!r}")
            mask = self._edit_mask(images, source_reports, new_reports, strength=0.5, num_maps=8,
                                   threshold_ratio=threshold_ratio, dilate=dilate, seed=0)
        if mask is not None:
            mask = mask.to(self.device, torch.float32)
            if mask.dim() != 4 or mask.shape[0] != len(images) or mask.shape[-2:] != images.shape[-2:]:
                raise ValueError(f"mask of shape {tuple(mask.shape)} for images of shape {tuple(images.shape)}: "
                                 "give (B, 1, S, S)")
        return mask

    def _edit_latents(self, images: torch.Tensor, source_reports: list[str], new_reports: list[str],
                      mask: torch.Tensor | None, strength: float, num_inference_steps: int, guidance_scale: float,
                      use_identity: bool) -> torch.Tensor:
        """Steps 1-2 of :meth:`counterfactual` (and the latent half of 3): invert, then denoise under the new
        reports, the latents outside the mask held to the inversion's."""
        from diffusers import DDIMScheduler

        # Inversion is only exact for DDIM; sample with DDIM whatever the pipeline's scheduler is.
        saved = self.scheduler
        self.scheduler = DDIMScheduler.from_config(saved.config)
        try:
            latents, start, trajectory = self.invert(images, source_reports, num_inference_steps, strength,
                                                     use_identity=use_identity, return_trajectory=True)
            identity = images.to(self.device, self.vae.dtype) \
                if self.conditioner.config.use_identity and use_identity else None
            generator = torch.Generator().manual_seed(0)
            hidden, cmask = self._guided_condition(new_reports, identity, generator, guidance_scale)
            keep = None
            if mask is not None:
                # a latent pixel may change when any image pixel it covers may
                latent_mask = F.adaptive_max_pool2d(mask, latents.shape[-1]).to(latents.dtype)
                keep = (latent_mask, trajectory)
            return self._sample(latents, hidden, cmask, guidance_scale, num_inference_steps, start=start,
                                progress=False, keep=keep)
        finally:
            self.scheduler = saved
