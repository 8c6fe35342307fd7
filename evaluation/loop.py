"""Loop metrics: round trips through both generators, and counterfactual edits.

``evaluation`` never imports the generators: they come in as callables.

* :func:`report_round_trip`: report -> image -> report. Label agreement between the input
  report and the re-written one (per finding: how often a positive finding survives the trip;
  overall: exact label-set agreement and CE micro-F1), plus BLEU, and the worst cases.
* :func:`image_round_trip`: image -> report -> image. Cosine similarity of an embedding
  (e.g. the backbone's image tower) and SSIM between the input and the regenerated image.
* :func:`counterfactual_metrics`: for edits with a known true counterfactual (SynthCXR's
  ``render``): flip rate (the classifier finds every added finding and none of the removed
  ones), SSIM/PSNR to the true counterfactual, and SSIM/PSNR to the source outside the region
  the true edit changes (identity preservation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from shared.labels import CHEXPERT_LABELS, PATHOLOGY_LABELS
from shared.metrics.clinical import binarize, clinical_efficacy
from shared.metrics.image import psnr, ssim_map
from shared.metrics.nlg import nlg_scores

__all__ = ["report_round_trip", "image_round_trip", "counterfactual_metrics", "psnr", "ssim_map"]

ReportsToImages = Callable[[list[str]], torch.Tensor]
ImagesToReports = Callable[[torch.Tensor], list[str]]

def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.flatten(1).mean(1)
    m = mask.float().expand_as(values)
    return (values * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)


def report_round_trip(
    reports: Sequence[str],
    report_to_image: ReportsToImages,
    image_to_report: ImagesToReports,
    labeler: Any | None = None,
    worst: int = 5,
    meteor: bool = False,
) -> dict[str, Any]:
    """report -> image -> report; returns metrics, per-finding survival and the worst cases."""
    from shared.text.labeler import ReportLabeler

    labeler = labeler or ReportLabeler()
    reports = list(reports)
    images = report_to_image(reports)
    rewritten = list(image_to_report(images))
    if len(rewritten) != len(reports):
        raise ValueError(f"image_to_report returned {len(rewritten)} reports for {len(reports)} images")
    lab_in, lab_out = labeler.label_batch(reports), labeler.label_batch(rewritten)
    pos_in, pos_out = binarize(lab_in), binarize(lab_out)
    cols = [CHEXPERT_LABELS.index(n) for n in PATHOLOGY_LABELS]
    out: dict[str, Any] = {"n": len(reports)}
    out["label_set_agreement"] = float((pos_in[:, cols] == pos_out[:, cols]).all(1).mean())
    out["ce_micro_f1"] = clinical_efficacy(lab_out, lab_in)["ce_micro_f1"]
    nlg = nlg_scores(rewritten, reports, meteor=meteor)
    out.update({k: v for k, v in nlg.items() if k.startswith(("bleu", "rouge"))})
    per_finding = {}
    for name in PATHOLOGY_LABELS:
        k = CHEXPERT_LABELS.index(name)
        has = pos_in[:, k]
        if has.any():
            per_finding[name] = {"n": int(has.sum()), "survival": float(pos_out[has, k].mean())}
    out["per_finding"] = per_finding
    wrong = (pos_in[:, cols] != pos_out[:, cols]).sum(1)
    order = np.argsort(-wrong, kind="stable")[:worst]
    out["worst"] = [{"index": int(i), "label_errors": int(wrong[i]), "input": reports[i], "output": rewritten[i]}
                    for i in order if wrong[i] > 0]
    return out


def image_round_trip(
    images: torch.Tensor,
    image_to_report: ImagesToReports,
    report_to_image: ReportsToImages,
    embed: Callable[[torch.Tensor], torch.Tensor],
    worst: int = 5,
) -> dict[str, Any]:
    """image -> report -> image; ``images`` (N, 1, H, W) in [0, 1]; ``embed`` maps images to (N, D)."""
    reports = list(image_to_report(images))
    regenerated = report_to_image(reports)
    if regenerated.shape != images.shape:
        raise ValueError(f"report_to_image returned {tuple(regenerated.shape)}, expected {tuple(images.shape)}")
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(embed(images).float(), embed(regenerated).float(), dim=1)
    ssim = _masked_mean(ssim_map(images, regenerated), None)
    order = torch.argsort(ssim)[:worst]
    return {
        "n": len(images),
        "embedding_cosine": float(cos.mean()),
        "ssim": float(ssim.mean()),
        "per_image": {"embedding_cosine": cos.tolist(), "ssim": ssim.tolist()},
        "worst": [{"index": int(i), "ssim": float(ssim[i]), "report": reports[int(i)]} for i in order],
        "reports": reports,
        "regenerated": regenerated,
    }


def counterfactual_metrics(
    source: torch.Tensor,
    edited: torch.Tensor,
    true_cf: torch.Tensor,
    classify: Callable[[torch.Tensor], torch.Tensor],
    added: Sequence[Sequence[str]],
    removed: Sequence[Sequence[str]],
    label_names: Sequence[str] = CHEXPERT_LABELS,
    threshold: float = 0.5,
    change_tol: float = 1.5 / 255,
    dilate: int = 2,
) -> dict[str, Any]:
    """Metrics of counterfactual edits.

    Args:
        source, edited, true_cf: (N, 1, H, W) in [0, 1]: the input, the model's edit, the truth.
        classify: images -> (N, C) probabilities in ``label_names`` order.
        added, removed: per edit, the finding names the edit adds and removes.
        threshold: a finding is "found" when its probability exceeds this.
        change_tol, dilate: the true edit region is where |true_cf - source| > change_tol,
            dilated by ``dilate`` pixels; identity is measured outside it.
    """
    if not (source.shape == edited.shape == true_cf.shape):
        raise ValueError("source, edited and true_cf must have the same shape")
    if not (len(added) == len(removed) == len(source)):
        raise ValueError("need one added and one removed list per edit")
    with torch.no_grad():
        probs = classify(edited).float().cpu()
    index = {n: i for i, n in enumerate(label_names)}
    flips = []
    for k in range(len(source)):
        ok = all(probs[k, index[n]] > threshold for n in added[k])
        ok &= all(probs[k, index[n]] <= threshold for n in removed[k])
        flips.append(float(ok))
    region = ((true_cf - source).abs() > change_tol).float()
    if dilate:
        region = torch.nn.functional.max_pool2d(region, 2 * dilate + 1, stride=1, padding=dilate)
    outside = region == 0
    ssim_cf = _masked_mean(ssim_map(edited, true_cf), None)
    ssim_out = _masked_mean(ssim_map(edited, source), outside)
    return {
        "n": len(source),
        "flip_rate": float(np.mean(flips)),
        "ssim_to_true_cf": float(ssim_cf.mean()),
        "psnr_to_true_cf": float(psnr(edited, true_cf).mean()),
        "ssim_outside_edit": float(ssim_out.mean()),
        "psnr_outside_edit": float(psnr(edited, source, outside).mean()),
        "edit_area": float(region.mean()),
        "per_edit": {"flip": flips, "ssim_to_true_cf": ssim_cf.tolist()},
    }
