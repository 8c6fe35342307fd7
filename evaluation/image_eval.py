"""``radloop evaluate images``: score generated images against real ones and the reports that made them.

* FID / KID and the real-vs-real split-half floor in a chosen feature space;
* per-pathology FID (reports' labels on the generated side, real labels on the real side);
* MS-SSIM diversity of the generated images;
* mAUC: the suite's classifier scores each generated image; the target is the label set of the
  report that conditioned it (labeler output; uncertain mentions left out).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from torchvision import transforms as T

from shared.data.dataset import ReportImageDataset
from shared.labels import CHEXPERT_LABELS
from shared.metrics import multilabel_auroc
from shared.text.labeler import ReportLabeler

from .images import (
    FeatureExtractor,
    conditional_fid,
    extract_features,
    fid_report,
    ms_ssim_diversity,
)

logger = logging.getLogger(__name__)

__all__ = ["load_image_set", "build_feature_extractor", "evaluate_images"]


def load_image_set(
    manifest: str | os.PathLike[str], split: str | None = None, image_size: int = 128, labels_from: str = "labeler",
    allow_outside_root: bool = False, image_root: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Images in [0, 1] (N, 1, S, S), reports, ids and labels (N, 14) of an annotation or manifest.

    ``labels_from``: ``"labeler"`` (label the reports) or ``"file"`` (the labels beside the annotation).
    ``allow_outside_root``: let image paths leave the manifest's folder; ``image_root``: the folder the image paths
    are relative to (default: beside the manifest, or R2Gen's ``images/``; see :class:`ReportImageDataset`).
    """
    to_tensor = T.Compose([T.Grayscale(1), T.Resize((image_size, image_size), antialias=True), T.ToTensor()])
    ds = ReportImageDataset(manifest, split, image_root, transform=to_tensor, max_views=1,
                            allow_outside_root=allow_outside_root)
    if len(ds) == 0:
        raise ValueError(f"{manifest} has no studies{f' in split {split!r}' if split else ''}")
    samples = [ds[i] for i in range(len(ds))]
    images = torch.stack([s["images"][0] for s in samples])
    reports = [s["report"] for s in samples]
    if labels_from == "labeler":
        labels = ReportLabeler().label_batch(reports)
    elif labels_from == "file":
        if "labels" not in samples[0]:
            raise ValueError(f"{manifest} has no labels file; use labels_from='labeler'")
        labels = np.stack([s["labels"].numpy() for s in samples])
    else:
        raise ValueError(f"labels_from must be 'labeler' or 'file', got {labels_from!r}")
    return {"images": images, "reports": reports, "ids": [s["study_id"] for s in samples], "labels": labels}


class _ImageTower(torch.nn.Module):
    """The backbone's image tower as a feature module: pooled (projected) image embedding."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_image(images)[0]


def build_feature_extractor(spec: str, classifier: torch.nn.Module | None = None) -> FeatureExtractor:
    """``"classifier"`` (the given CXRClassifier), ``"backbone:DIR"`` (the shared backbone's image
    tower) or ``"timm:ARCH[:WEIGHTS]"`` (a timm model, random or initialised from a local state dict;
    nothing is downloaded)."""
    if spec.startswith("backbone:"):
        from shared.backbone import RadCLIP

        backbone = RadCLIP.from_pretrained(spec.split(":", 1)[1]).eval()
        return FeatureExtractor(_ImageTower(backbone), in_chans=1, image_size=backbone.image_size)
    if spec == "classifier":
        if classifier is None:
            raise ValueError("features 'classifier' need --classifier DIR")
        return FeatureExtractor(classifier, in_chans=1, image_size=classifier.config.image_size)
    if spec.startswith("timm:"):
        import timm

        from shared.modeling import load_state_dict_file

        parts = spec.split(":", 2)
        model = timm.create_model(parts[1], pretrained=False, num_classes=0, in_chans=1)
        if len(parts) == 3:
            state = load_state_dict_file(parts[2])
            missing, unexpected = model.load_state_dict(state, strict=False)
            if len(missing) == len(model.state_dict()):
                raise ValueError(f"no tensor of {parts[2]} fits timm model '{parts[1]}'")
            logger.info("feature model %s: %d missing, %d unexpected keys", parts[1], len(missing), len(unexpected))
        return FeatureExtractor(model, in_chans=1, image_size=None)
    raise ValueError(f"unknown feature extractor '{spec}'; use 'classifier', 'backbone:DIR' or 'timm:ARCH[:WEIGHTS]'")


def evaluate_images(
    generated: str | os.PathLike[str],
    real: str | os.PathLike[str] | None = None,
    real_split: str | None = "test",
    classifier: str | os.PathLike[str] | None = None,
    features: str = "classifier",
    image_size: int = 128,
    real_labels_from: str = "file",
    min_count: int = 10,
    allow_outside_root: bool = False,
    real_image_root: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """All image metrics; keys ``fid``, ``kid_mean``, ``kid_std``, ``fid_floor``, ``fid_over_floor``,
    ``cfid/<finding>``, ``ms_ssim_diversity``, ``mauc``, ``auroc/<finding>``, ``n_generated``, ``n_real``.
    ``allow_outside_root`` applies to both image sets (see :class:`ReportImageDataset`); ``real_image_root`` is the
    folder the real annotation's image paths are relative to (R2Gen's layout with ``images/`` elsewhere)."""
    from .classifier import Judge, load_classifier

    gen = load_image_set(generated, None, image_size, "labeler", allow_outside_root)
    out: dict[str, Any] = {"n_generated": len(gen["images"])}
    out["ms_ssim_diversity"] = ms_ssim_diversity(gen["images"])
    clf = load_classifier(classifier) if classifier else None
    if clf is not None:
        probs = Judge(clf)(gen["images"]).numpy()
        out.update(multilabel_auroc(probs, gen["labels"], CHEXPERT_LABELS))
    if real is not None:
        ref = load_image_set(real, real_split, image_size, real_labels_from, allow_outside_root, real_image_root)
        out["n_real"] = len(ref["images"])
        extractor = build_feature_extractor(features, clf)
        real_f, gen_f = extract_features(extractor, ref["images"]), extract_features(extractor, gen["images"])
        out.update(fid_report(real_f, gen_f))
        for name, value in conditional_fid(real_f, ref["labels"], gen_f, gen["labels"], CHEXPERT_LABELS,
                                           min_count).items():
            out[f"cfid/{name}"] = value
        out["features"] = features
    return out
