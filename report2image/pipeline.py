"""``ReportToCXRPipeline``: reports -> chest X-rays with a latent diffusion model (diffusers).

    pipe = ReportToCXRPipeline.from_pretrained("runs/diffusion/final")
    images = pipe(["Large left pleural effusion."], generator=torch.Generator().manual_seed(0)).images  # PIL images
    batch = pipe.generate_batched(reports, batch_size=32, seed=0, output_type="pt")  # (N, 1, S, S) in [0, 1]
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # DPM-Solver++
    edited = pipe.counterfactual(pil_image, "No pleural effusion.", strength=0.6).images

Sampling defaults travel with the pipeline (``sampling_config.json``, :class:`SamplingConfig`: guidance, steps,
edit guidance / strength / steps): every call leaves an argument unset (None) to mean "the pipeline's value".
The sampler is the saved ``scheduler``.

Images go in as PIL or [0, 1] tensors and come out in the ``output_type`` asked for; the [-1, 1]
range of the models stays inside (:mod:`shared.data.image_processor`).

Components: ``vae`` (AutoencoderKL), ``unet`` (UNet2DConditionModel), ``scheduler`` (DDIM by
default; any diffusers scheduler with the same config), ``text_encoder`` (the shared RadCLIP
backbone; its text tower gives token features, its image tower scores noise optimisation) and
``conditioner`` (:class:`~report2image.conditioning.ReportConditioner`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
)
from diffusers.schedulers import KarrasDiffusionSchedulers
from PIL import Image
from tqdm.auto import tqdm

from shared.backbone.clip import RadCLIP
from shared.data.image_processor import postprocess, preprocess
from shared.io import read_json
from shared.modeling import check_safetensors, saved_class
from shared.saved_settings import load_settings, save_settings
from shared.text.labeler import ReportLabeler
from shared.zoo import resolve_zoo

from .conditioning import ConditionOutput, ReportConditioner, encode_attributes
from .editing import CounterfactualEditingMixin
from .outputs import CounterfactualOutput, CXRPipelineOutput

__all__ = ["ReportToCXRPipeline", "CXRPipelineOutput", "CounterfactualOutput", "SamplingConfig", "SAMPLING_FILE",
           "SAMPLERS",
           "backbone_text_features", "backbone_image_embeds", "check_pipeline_folder"]

#: the samplers the CLI and the app offer (:meth:`ReportToCXRPipeline.use_sampler`)
SAMPLERS = {"dpmsolver++": DPMSolverMultistepScheduler, "ddim": DDIMScheduler}

#: the file of a pipeline folder that holds its :class:`SamplingConfig`
SAMPLING_FILE = "sampling_config.json"


@dataclass
class SamplingConfig:
    """A pipeline's sampling defaults, saved with it; each default of the suite's sampling lives here."""

    #: classifier-free guidance of generation (1 = off)
    guidance_scale: float = 3.0
    num_inference_steps: int = 20
    #: guidance, strength and steps of counterfactual edits
    edit_guidance_scale: float = 2.0
    edit_strength: float = 0.6
    edit_num_inference_steps: int = 50
    #: the sampler the CLI and the app switch to (a key of :data:`SAMPLERS`); a bare ``pipe(...)`` call samples
    #: with the saved ``scheduler`` (diffusers' convention), as counterfactual editing must (DDIM inversion)
    sampler: str = "dpmsolver++"

#: the (library, class) each component of a saved pipeline may name in ``model_index.json``
PIPELINE_COMPONENTS: dict[str, set[tuple[str, str]]] = {
    "vae": {("diffusers", "AutoencoderKL")},
    "unet": {("diffusers", "UNet2DConditionModel")},
    "scheduler": {("diffusers", name) for name in ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler",
                                                   "EulerDiscreteScheduler", "PNDMScheduler")},
    "text_encoder": {("shared.backbone.clip", "RadCLIP")},
    "conditioner": {("report2image.conditioning", "ReportConditioner")},
}


def check_pipeline_folder(folder: str | os.PathLike[str]) -> None:
    """Raise a one-line error unless ``folder`` is a ReportToCXRPipeline whose ``model_index.json`` names only
    the pipeline's own component classes and whose weights are all ``.safetensors``.

    ``DiffusionPipeline.from_pretrained`` imports the module each component names and calls its loader, so
    an unchecked ``model_index.json`` from someone else could make loading run any importable code.
    """
    folder, _ = saved_class(folder, {"ReportToCXRPipeline": None}, index_file="model_index.json")
    index_file = os.path.join(folder, "model_index.json")
    index = read_json(index_file)
    for name, value in index.items():
        if name.startswith("_"):
            continue
        allowed = PIPELINE_COMPONENTS.get(name)
        if allowed is None:
            raise ValueError(f"{index_file}: unknown component {name!r}; expected {sorted(PIPELINE_COMPONENTS)}")
        if not (isinstance(value, list) and len(value) == 2 and tuple(value) in allowed):
            raise ValueError(f"{index_file}: component {name!r} names {value!r}; allowed: "
                             f"{sorted(list(a) for a in allowed)}")
        if name != "scheduler":
            check_safetensors(os.path.join(folder, name))


def backbone_text_features(backbone: RadCLIP, reports: Sequence[str], device: torch.device | str
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's token features (B, T, W) and mask (B, T), padded/cut to its context length."""
    if backbone.tokenizer is None:
        raise ValueError("the text encoder has no tokenizer attached")
    ids, mask = backbone.tokenizer.batch_encode(list(reports))
    length = backbone.context_length
    ids = F.pad(ids, (0, max(length - ids.shape[1], 0)))[:, :length]
    mask = F.pad(mask, (0, max(length - mask.shape[1], 0)))[:, :length]
    _, tokens = backbone.encode_text(ids.to(device))
    return tokens, mask.to(device)


def backbone_image_embeds(backbone: RadCLIP, images: torch.Tensor) -> torch.Tensor:
    """Unit-norm image embeddings (B, E) of images (B, 1, S, S) in [-1, 1], resized to the tower's side."""
    size = backbone.image_size
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return F.normalize(backbone.encode_image(images)[0], dim=-1)


class ReportToCXRPipeline(CounterfactualEditingMixin, DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->conditioner->unet->vae"

    def __init__(self, vae: AutoencoderKL, unet: UNet2DConditionModel, scheduler: KarrasDiffusionSchedulers,
                 text_encoder: RadCLIP, conditioner: ReportConditioner) -> None:
        super().__init__()
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler, text_encoder=text_encoder,
                              conditioner=conditioner)
        self._labeler = ReportLabeler()
        self.sampling = SamplingConfig()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any
                        ) -> ReportToCXRPipeline:
        """A saved pipeline folder or a ``zoo:NAME`` entry (:mod:`shared.zoo`). Half-precision zoo
        weights load into float32 components unless ``torch_dtype`` says otherwise.

        A local folder's ``model_index.json`` is checked first (:func:`check_pipeline_folder`): diffusers
        imports whatever module it names, so only the pipeline's own component classes pass.
        """
        path = resolve_zoo(pretrained_model_name_or_path)
        if os.path.isdir(path):
            check_pipeline_folder(path)
        kwargs.setdefault("use_safetensors", True)
        pipe = super().from_pretrained(path, **kwargs)
        if "torch_dtype" not in kwargs:
            for name in ("vae", "unet", "text_encoder", "conditioner"):
                getattr(pipe, name).float()
        if os.path.isdir(path):
            pipe.sampling = load_settings(path, SAMPLING_FILE, SamplingConfig)
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> None:
        """The components (diffusers' layout) and the sampling defaults (``sampling_config.json``)."""
        super().save_pretrained(save_directory, **kwargs)
        save_settings(Path(save_directory), SAMPLING_FILE, self.sampling)

    @staticmethod
    def saved_sampling(path: str | os.PathLike[str]) -> SamplingConfig:
        """The sampling defaults saved in a pipeline folder (or ``zoo:NAME``), without loading its weights."""
        return load_settings(resolve_zoo(path), SAMPLING_FILE, SamplingConfig)

    def use_sampler(self, name: str) -> None:
        """Sample with ``name`` (a key of :data:`SAMPLERS`) from now on, on the saved scheduler's noise schedule."""
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
        self.scheduler = SAMPLERS[name].from_config(self.scheduler.config)

    def _guidance(self, value: float | None) -> float:
        return self.sampling.guidance_scale if value is None else float(value)

    def _steps(self, value: int | None) -> int:
        return self.sampling.num_inference_steps if value is None else int(value)

    # -- conditioning ------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.vae.config.sample_size)

    def text_features(self, reports: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone token features (B, T, W) and their mask (B, T) for a list of reports."""
        return backbone_text_features(self.text_encoder, reports, self.device)

    def encode_reports(self, reports: Sequence[str], identity_images: torch.Tensor | None = None,
                       identity_codes: torch.Tensor | None = None, drop: torch.Tensor | None = None) -> ConditionOutput:
        """Conditioning for the UNet (see :class:`ReportConditioner`)."""
        tokens, mask = self.text_features(reports)
        attributes = None
        if self.conditioner.config.use_attributes:
            attributes = encode_attributes(reports, self._labeler).to(self.device)
        if identity_images is not None:
            identity_images = identity_images.to(self.device, self.vae.dtype)
        return self.conditioner(tokens, mask, attributes, identity_images, drop=drop, identity_codes=identity_codes)

    def _guided_condition(self, reports: Sequence[str], identity_images: torch.Tensor | None,
                          generator: torch.Generator | None, guidance_scale: float
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states, mask) with the unconditional half first when guidance is on."""
        codes = None
        if self.conditioner.config.use_identity and identity_images is None:
            codes = self.conditioner.identity_from_bank(len(reports), generator)
        cond = self.encode_reports(reports, identity_images, codes)
        if guidance_scale <= 1.0:
            return cond.hidden_states, cond.mask
        drop = torch.ones(len(reports), dtype=torch.bool, device=self.device)
        uncond = self.encode_reports(reports, identity_images, cond.identity if codes is not None else None, drop=drop)
        return torch.cat([uncond.hidden_states, cond.hidden_states]), torch.cat([uncond.mask, cond.mask])

    def _eps(self, latents: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor,
             guidance_scale: float) -> torch.Tensor:
        guided = guidance_scale > 1.0
        x = torch.cat([latents] * 2) if guided else latents
        x = self.scheduler.scale_model_input(x, t)
        eps = self.unet(x, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        if guided:
            uncond, cond = eps.chunk(2)
            eps = uncond + guidance_scale * (cond - uncond)
        return eps

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample.clamp(-1, 1)

    def prepare_latents(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        c, s = self.unet.config.in_channels, self.unet.config.sample_size
        latents = torch.randn((batch, c, s, s), generator=generator, device=generator.device if generator else "cpu")
        return latents.to(self.device, self.unet.dtype)

    def _sample(self, latents: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor, guidance_scale: float,
                num_inference_steps: int, start: int = 0, progress: bool = True,
                keep: tuple[torch.Tensor, list[torch.Tensor]] | None = None) -> torch.Tensor:
        """Denoise from ``scheduler.timesteps[start]``. ``keep`` = (latent mask (B, 1, s, s), inversion
        trajectory): after each step, latents outside the mask are those of the trajectory's step."""
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = self.scheduler.timesteps[start:]
        latents = latents * self.scheduler.init_noise_sigma if start == 0 else latents
        for i, t in enumerate(self.progress_bar(timesteps) if progress else timesteps):
            out = self._eps(latents, t, hidden, mask, guidance_scale)
            latents = self.scheduler.step(out, t, latents).prev_sample
            if keep is not None:
                latent_mask, trajectory = keep
                background = trajectory[len(timesteps) - 1 - i]
                latents = latent_mask * latents + (1 - latent_mask) * background
        return latents

    # -- generation --------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, reports: str | Sequence[str], num_inference_steps: int | None = None,
                 guidance_scale: float | None = None,
                 generator: torch.Generator | None = None, identity_images: torch.Tensor | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "pil", return_dict: bool = True
                 ) -> CXRPipelineOutput | tuple:
        """Generate one image per report.

        Args:
            reports: report text(s).
            num_inference_steps: sampler steps (the scheduler decides how they are spaced); None: the pipeline's.
            guidance_scale: classifier-free guidance on the pathology condition (1 = off); None: the pipeline's.
            generator: seeds the initial noise (and the identity drawn from the bank).
            identity_images: the patient whose anatomy to keep, as :func:`preprocess` takes them
                (PIL images or [0, 1] tensors (B, 1, S, S)); default: a random identity from the bank
                kept with the model.
            latents: (B, C, s, s) initial noise (e.g. from :meth:`optimize_initial_noise`).
            output_type: ``"pil"`` (default), ``"pt"``, ``"np"`` or ``"model"`` (see :class:`CXRPipelineOutput`).
        """
        reports = [reports] if isinstance(reports, str) else list(reports)
        if not reports:
            raise ValueError("no reports given")
        if identity_images is not None:
            identity_images = preprocess(identity_images)
        guidance_scale, num_inference_steps = self._guidance(guidance_scale), self._steps(num_inference_steps)
        hidden, mask = self._guided_condition(reports, identity_images, generator, guidance_scale)
        latents = self.prepare_latents(len(reports), generator) if latents is None else latents.to(self.device)
        latents = self._sample(latents, hidden, mask, guidance_scale, num_inference_steps)
        images = postprocess(self._decode(latents), output_type)
        return CXRPipelineOutput(images, latents) if return_dict else (images, latents)

    @torch.no_grad()
    def generate_batched(self, reports: Sequence[str], batch_size: int = 32, seed: int = 0,
                         num_inference_steps: int | None = None, guidance_scale: float | None = None,
                         latents: torch.Tensor | None = None, output_type: str = "pt", progress: bool = False
                         ) -> torch.Tensor | np.ndarray | list[Image.Image]:
        """One image per report, ``batch_size`` reports at a time, in ``output_type``.

        The batch that starts at report ``k`` draws its noise (and bank identity) from
        ``torch.Generator().manual_seed(seed + k)``, so a run is reproducible from ``seed`` alone.
        ``latents`` (N, C, s, s), when given, are split the same way. Steps and guidance: None, the pipeline's.
        """
        reports = list(reports)
        if not reports:
            raise ValueError("no reports given")
        if latents is not None and len(latents) != len(reports):
            raise ValueError(f"{len(latents)} initial latents for {len(reports)} reports")
        starts = range(0, len(reports), batch_size)
        out = []
        for k in tqdm(starts, desc="report -> image", unit="batch", leave=False, disable=not progress):
            out.append(self(reports[k:k + batch_size], num_inference_steps, guidance_scale,
                            generator=torch.Generator().manual_seed(seed + k),
                            latents=None if latents is None else latents[k:k + batch_size],
                            output_type=output_type).images)
        if output_type == "pil":
            return [image for batch in out for image in batch]
        return np.concatenate(out) if output_type == "np" else torch.cat(out)

    # -- long-tail initial-noise optimisation ------------------------------------------
    def report_image_score(self, images: torch.Tensor, reports: Sequence[str]) -> torch.Tensor:
        """(B,) cosine similarity between the backbone's embeddings of images (B, 1, S, S) and reports."""
        img = backbone_image_embeds(self.text_encoder, images)
        ids, _ = self.text_encoder.tokenizer.batch_encode(list(reports))
        txt, _ = self.text_encoder.encode_text(ids.to(self.device))
        return (img * F.normalize(txt, dim=-1)).sum(-1)

    def optimize_initial_noise(
        self, reports: str | Sequence[str], score_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        steps: int = 5, lr: float = 0.05, prior_weight: float = 1.0, short_steps: int = 4,
        guidance_scale: float | None = None, generator: torch.Generator | None = None,
        identity_images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Initial latents (B, C, s, s) pushed towards the reports' findings, for rare classes.

        A few Adam steps on the initial noise through a short deterministic DDIM sampler
        (``short_steps``) and the decoder maximise ``score_fn(images) -> (B,)`` (default: the
        backbone's image-report similarity) under a Gaussian-prior penalty
        ``prior_weight * (|z|^2 / d - 1)^2`` that keeps the noise on the shell where N(0, I) samples
        lie. Pass the result as ``latents=`` to :meth:`__call__`. ``guidance_scale``: None, the pipeline's.
        """
        from diffusers import DDIMScheduler

        guidance_scale = self._guidance(guidance_scale)
        reports = [reports] if isinstance(reports, str) else list(reports)
        identity_images = None if identity_images is None else preprocess(identity_images)
        score_fn = score_fn or (lambda images: self.report_image_score(images, reports))
        with torch.no_grad():
            hidden, mask = self._guided_condition(reports, identity_images, generator, guidance_scale)
        z = self.prepare_latents(len(reports), generator).detach().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        short = DDIMScheduler.from_config(self.scheduler.config)
        saved = self.scheduler
        frozen = [p for m in (self.unet, self.vae, self.text_encoder) for p in m.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        self.scheduler = short
        try:
            for _ in range(steps):
                latents = self._sample(z, hidden, mask, guidance_scale, short_steps, progress=False)
                score = score_fn(self._decode(latents))
                d = z[0].numel()
                prior = ((z.flatten(1).pow(2).sum(1) / d - 1.0) ** 2).mean()
                loss = -score.mean() + prior_weight * prior
                opt.zero_grad()
                loss.backward()
                opt.step()
        finally:
            self.scheduler = saved
            for p in frozen:
                p.requires_grad_(True)
        return z.detach()
