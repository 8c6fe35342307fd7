"""``radloop roundtrip``: report -> image -> report and image -> report -> image.

The two directions are glued here (the application layer may import both); the metrics are
``evaluation.loop.report_round_trip`` and ``image_round_trip``: label-set agreement and
per-finding survival of report round trips, embedding cosine and SSIM of image round trips,
with the worst cases listed.

:class:`TrueRenderer` puts SynthCXR's own renderer in the generator's place: each report is drawn for
its study's patient and acquisition with the findings the labeler reads in it. Its round trips are
the ceiling a learned generator is measured against (``run_roundtrip(..., ceiling=True)``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.image_eval import load_image_set
from evaluation.loop import image_round_trip, report_round_trip
from image2report.generator import ReportGenerator
from report2image import ReportToCXRPipeline
from report2image.pipeline import backbone_image_embeds
from shared.data.image_processor import to_model_range
from shared.text.labeler import ReportLabeler
from synthcxr import FINDING_SPECS, Acquisition, Finding, Patient, read_attributes, render, stable_seed

logger = logging.getLogger(__name__)

__all__ = ["RoundTrip", "TrueRenderer", "findings_from_report", "run_roundtrip"]

#: the labeler's severity words from least to most; a word a finding does not take maps to its nearest allowed
_SEVERITY_ORDER = ("trace", "small", "mild", "moderate", "large", "severe")


def _nearest_severity(word: str | None, allowed: Sequence[str]) -> str | None:
    if not allowed or word is None:
        return None  # Finding fills in the finding's first (mildest) allowed value
    if word in allowed:
        return word
    rank = _SEVERITY_ORDER.index(word)
    return min(allowed, key=lambda a: abs(_SEVERITY_ORDER.index(a) - rank))


def findings_from_report(report: str, labeler: ReportLabeler | None = None) -> list[Finding]:
    """The SynthCXR findings a report states as present: severity, side and zone where the report gives them
    (and the finding takes them), SynthCXR's defaults otherwise. What no report states -- the exact shape and
    position -- comes from a seed of the report, so the same report always draws the same finding."""
    result = (labeler or ReportLabeler()).label(report)
    out: dict[str, Finding] = {}
    for attr in result.attributes:
        spec = FINDING_SPECS.get(attr.name)
        if spec is None or attr.status != 1 or attr.name in out or result.labels.get(attr.name) != 1:
            continue
        laterality = attr.laterality if attr.laterality in spec.lateralities else None
        zone = next((z for z in attr.zones if z in spec.zones), None)
        out[attr.name] = Finding(attr.name, severity=_nearest_severity(attr.severity, spec.severities),
                                 laterality=laterality, zone=zone, seed=stable_seed("report", report, attr.name))
    return list(out.values())


class TrueRenderer:
    """SynthCXR's renderer as a report -> image model for the studies ``ids`` of a SynthCXR folder, in order:
    report ``i`` is drawn for study ``i``'s patient and acquisition (``attributes.jsonl``) at ``size`` px.

    Called with N reports it returns (N, 1, size, size) in [0, 1]. The ceiling of a learned generator: it
    knows the patient, the acquisition and the rendering; only the findings come from the report.
    """

    def __init__(self, data_dir: str | Path, ids: Sequence[str], size: int,
                 labeler: ReportLabeler | None = None) -> None:
        by_id = {r["id"]: r for r in read_attributes(data_dir)}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ValueError(f"{Path(data_dir) / 'attributes.jsonl'} has no study '{missing[0]}'")
        self.studies = [(Patient.from_dict(by_id[i]["patient"]), Acquisition.from_dict(by_id[i]["acquisition"]))
                        for i in ids]
        self.size = int(size)
        self.labeler = labeler or ReportLabeler()

    def __call__(self, reports: Sequence[str]) -> torch.Tensor:
        if len(reports) != len(self.studies):
            raise ValueError(f"TrueRenderer holds {len(self.studies)} studies, got {len(reports)} reports")
        images = [render(patient, findings_from_report(report, self.labeler), acq, self.size, "frontal")
                  for report, (patient, acq) in zip(reports, self.studies, strict=True)]
        return torch.from_numpy(np.stack(images).astype(np.float32))[:, None].clamp(0, 1)


class RoundTrip:
    """Both directions as callables on [0, 1] images (N, 1, S, S) at the report model's size."""

    def __init__(self, pipe: ReportToCXRPipeline, generator: ReportGenerator, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, seed: int = 0, num_beams: int | None = None,
                 batch_size: int = 32) -> None:
        self.pipe, self.generator = pipe, generator
        # unset: the pipeline's sampling defaults and the report model's decoding settings
        sampling = pipe.sampling
        self.num_inference_steps = sampling.num_inference_steps if num_inference_steps is None else num_inference_steps
        self.guidance_scale = sampling.guidance_scale if guidance_scale is None else guidance_scale
        self.seed = seed
        self.beams, self.batch = num_beams, batch_size
        self.size = int(generator.model.config.image_size)

    def report_to_image(self, reports: list[str]) -> torch.Tensor:
        images = self.pipe.generate_batched(reports, self.batch, self.seed, self.num_inference_steps,
                                            self.guidance_scale, output_type="pt", progress=True)
        if images.shape[-1] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return images.clamp(0, 1)

    def image_to_report(self, images: torch.Tensor) -> list[str]:
        # the report model's own pixels: its saved resize, crop and normalisation
        return self.generator.generate(self.generator.preprocess.apply(images), num_beams=self.beams)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The diffusion backbone's (unit-norm) image embedding of [0, 1] images."""
        return backbone_image_embeds(self.pipe.text_encoder, to_model_range(images))

    @torch.no_grad()
    def both(self, reports: list[str], images: torch.Tensor) -> tuple[dict[str, Any], dict[str, Any]]:
        """(report -> image -> report metrics of ``reports``, image -> report -> image metrics of
        ``images`` (N, 1, S, S) in [0, 1]); the latter keeps the regenerated images."""
        return (report_round_trip(reports, self.report_to_image, self.image_to_report),
                image_round_trip(images, self.image_to_report, self.report_to_image, self.embed))


def _named(trip: tuple[dict[str, Any], dict[str, Any]], ids: Sequence[str]) -> dict[str, Any]:
    reports_trip, images_trip = trip
    images_trip.pop("regenerated")
    for case in images_trip["worst"] + reports_trip["worst"]:
        case["id"] = ids[case["index"]]
    return {"report_to_image_to_report": reports_trip, "image_to_report_to_image": images_trip}


def run_roundtrip(diffusion: str, report_model: str, annotation: str, split: str = "test", n: int = 64,
                  num_inference_steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                  ceiling: bool = False, image_root: str | None = None,
                  allow_outside_root: bool = False) -> dict[str, Any]:
    """Both round trips on the first ``n`` studies of ``split``; the regenerated images are dropped.

    ``ceiling``: also both round trips with :class:`TrueRenderer` in the generator's place (the annotation
    must lie in a SynthCXR folder), under ``"ceiling"``; the same report model and image embedding.
    ``image_root`` / ``allow_outside_root``: where the annotation's image paths point (see :class:`ReportImageDataset`).
    Steps and guidance left None are the pipeline's saved defaults.
    """
    pipe = ReportToCXRPipeline.from_pretrained(diffusion)
    pipe.set_progress_bar_config(disable=True)
    trip = RoundTrip(pipe, ReportGenerator.from_pretrained(report_model), num_inference_steps, guidance_scale, seed)
    data = load_image_set(annotation, split, trip.size, "labeler", allow_outside_root, image_root)
    n = min(n, len(data["reports"]))
    reports, images, ids = data["reports"][:n], data["images"][:n], data["ids"][:n]
    out = _named(trip.both(reports, images), ids)
    if ceiling:
        renderer = TrueRenderer(Path(annotation).parent, ids, trip.size)
        with torch.no_grad():
            out["ceiling"] = _named((report_round_trip(reports, renderer, trip.image_to_report),
                                     image_round_trip(images, trip.image_to_report, renderer, trip.embed)), ids)
        out["ceiling"]["renderer"] = "SynthCXR render(): the study's patient and acquisition, the report's findings"
    return out
