"""``radloop roundtrip``: report -> image -> report and image -> report -> image.

The two directions are glued here (the application layer may import both); the metrics are
``evaluation.loop.report_round_trip`` and ``image_round_trip``: label-set agreement and
per-finding survival of report round trips, embedding cosine and SSIM of image round trips,
with the worst cases listed.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from evaluation.image_eval import load_image_set
from evaluation.loop import image_round_trip, report_round_trip
from image2report.generator import ReportGenerator
from report2image import ReportToCXRPipeline
from report2image.pipeline import backbone_image_embeds
from shared.data.image_processor import to_model_range

logger = logging.getLogger(__name__)

__all__ = ["RoundTrip", "run_roundtrip"]


class RoundTrip:
    """Both directions as callables on [0, 1] images (N, 1, S, S) at the report model's size."""

    def __init__(self, pipe: ReportToCXRPipeline, generator: ReportGenerator, num_inference_steps: int = 20,
                 guidance_scale: float = 3.0, seed: int = 0, num_beams: int = 1, batch_size: int = 32) -> None:
        self.pipe, self.generator = pipe, generator
        self.steps, self.guidance, self.seed = num_inference_steps, guidance_scale, seed
        self.beams, self.batch = num_beams, batch_size
        self.size = int(generator.model.config.image_size)

    def report_to_image(self, reports: list[str]) -> torch.Tensor:
        images = self.pipe.generate_batched(reports, self.batch, self.seed, self.steps, self.guidance,
                                            output_type="pt", progress=True)
        if images.shape[-1] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return images.clamp(0, 1)

    def image_to_report(self, images: torch.Tensor) -> list[str]:
        return self.generator.generate(to_model_range(images), num_beams=self.beams)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The diffusion backbone's (unit-norm) image embedding of [0, 1] images."""
        return backbone_image_embeds(self.pipe.text_encoder, to_model_range(images))

    @torch.no_grad()
    def both(self, reports: list[str], images: torch.Tensor) -> tuple[dict[str, Any], dict[str, Any]]:
        """(report -> image -> report metrics of ``reports``, image -> report -> image metrics of
        ``images`` (N, 1, S, S) in [0, 1]); the latter keeps the regenerated images."""
        return (report_round_trip(reports, self.report_to_image, self.image_to_report),
                image_round_trip(images, self.image_to_report, self.report_to_image, self.embed))


def run_roundtrip(diffusion: str, report_model: str, annotation: str, split: str = "test", n: int = 64,
                  num_inference_steps: int = 20, guidance_scale: float = 3.0, seed: int = 0) -> dict[str, Any]:
    """Both round trips on the first ``n`` studies of ``split``; the regenerated images are dropped."""
    pipe = ReportToCXRPipeline.from_pretrained(diffusion)
    pipe.set_progress_bar_config(disable=True)
    trip = RoundTrip(pipe, ReportGenerator.from_pretrained(report_model), num_inference_steps, guidance_scale, seed)
    data = load_image_set(annotation, split, trip.size, "labeler")
    n = min(n, len(data["reports"]))
    reports_trip, images_trip = trip.both(data["reports"][:n], data["images"][:n])
    images_trip.pop("regenerated")
    for case in images_trip["worst"]:
        case["id"] = data["ids"][case["index"]]
    for case in reports_trip["worst"]:
        case["id"] = data["ids"][case["index"]]
    return {"report_to_image_to_report": reports_trip, "image_to_report_to_image": images_trip}
