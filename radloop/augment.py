"""``radloop augment``: rare-finding augmentation of report-model training with report2image.

1. Pick rare findings: those below ``rare_below`` prevalence among the training reports (labeler),
   or the ones named in ``findings``.
2. Compose K reports per finding from training-report sentences: one sentence the labeler reads as
   that finding being present, plus sentences of normal reports that do not mention it.
3. Generate one image per composed report with a trained ``ReportToCXRPipeline`` and write them as
   a training split with ``synthetic: true`` beside the real studies (same JSONL manifest format).
4. Train the report model on real only and on real + synthetic (same config, same seeds), score
   both on the real test split, and report per-arm means with t-intervals over seeds and the
   paired per-seed difference -- for the rare findings' clinical F1 and the overall metrics.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from evaluation.reports import evaluate_reports
from image2report.train import ReportExperiment, generate_reports, train_report_model
from shared.config import atomic_save_image, atomic_write_text
from shared.data.dataset import load_records
from shared.labels import CHEXPERT_LABELS, PATHOLOGY_LABELS
from shared.metrics.clinical import binarize, per_label_scores
from shared.metrics.stats import mean_ci
from shared.text.labeler import ReportLabeler

logger = logging.getLogger(__name__)

__all__ = ["AugmentExperiment", "pick_rare_findings", "sentence_pool", "compose_reports", "write_synthetic_manifest",
           "run_augment"]


@dataclass
class AugmentExperiment:
    annotation: str = "data/synthcxr/annotation.json"
    #: a trained ReportToCXRPipeline folder (``radloop train diffusion``)
    diffusion: str = "runs/diffusion/best"
    output_dir: str = "runs/augment"
    #: findings named here are used as they are; else every finding below ``rare_below`` prevalence
    findings: list[str] = field(default_factory=list)
    rare_below: float = 0.05
    per_finding: int = 50
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    num_inference_steps: int = 20
    guidance_scale: float = 3.0
    #: the report-model experiment both arms train with (its ``train.output_dir`` is replaced per arm)
    report: ReportExperiment = field(default_factory=ReportExperiment)


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _sentences(report: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(report) if s.strip()]


def pick_rare_findings(reports: Sequence[str], rare_below: float, labeler: ReportLabeler | None = None) -> list[str]:
    """Pathology findings stated positive in fewer than ``rare_below`` of ``reports`` (but in at least one)."""
    pos = binarize((labeler or ReportLabeler()).label_batch(reports))
    prevalence = pos.mean(0)
    return [name for name in PATHOLOGY_LABELS
            if 0 < prevalence[CHEXPERT_LABELS.index(name)] < rare_below]


#: positives a sentence about one finding may imply by the label hierarchy
_PARENTS = ("Lung Opacity", "Enlarged Cardiomediastinum")


def sentence_pool(reports: Sequence[str], labeler: ReportLabeler | None = None) -> tuple[list[str], np.ndarray]:
    """The distinct sentences of ``reports`` and their labels (N, 14) in {1, 0, -1, NaN}."""
    labeler = labeler or ReportLabeler()
    sentences = sorted({s for r in reports for s in _sentences(r)})
    return sentences, labeler.label_batch(sentences)


def compose_reports(pool: tuple[list[str], np.ndarray], finding: str, k: int, seed: int = 0) -> list[str]:
    """``k`` reports stating ``finding`` and nothing else abnormal, from a :func:`sentence_pool`:
    one sentence stating the finding (its only positive, up to hierarchy parents) and up to three
    sentences that state no finding and do not mention this one.

    Raises ValueError when no training sentence states the finding.
    """
    sentences, labels = pool
    j = CHEXPERT_LABELS.index(finding)
    pos = binarize(labels)
    others = [i for i, name in enumerate(CHEXPERT_LABELS) if name != finding and name not in _PARENTS]
    stating = [s for s, row, lab in zip(sentences, pos, labels, strict=True)
               if row[j] and not row[others].any() and lab[j] == 1]
    neutral = [s for s, row, lab in zip(sentences, pos, labels, strict=True)
               if not row.any() and np.isnan(lab[j]) and not (lab == -1).any()]
    if not stating:
        raise ValueError(f"no training sentence states '{finding}': cannot compose reports for it")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        picked = [stating[int(rng.integers(len(stating)))]]
        if neutral:
            picked += [neutral[int(i)] for i in rng.choice(len(neutral), size=min(3, len(neutral)), replace=False)]
        out.append(" ".join(picked))
    return out


def write_synthetic_manifest(pipe: Any, reports_by_finding: dict[str, list[str]], out_dir: str | os.PathLike[str],
                             num_inference_steps: int = 20, guidance_scale: float = 3.0, seed: int = 0,
                             batch_size: int = 32) -> Path:
    """Generate one image per report; write ``images/*.png`` and ``synthetic.jsonl`` (split train)."""

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for finding, reports in tqdm(reports_by_finding.items(), desc="augment: synthetic images", unit="finding"):
        slug = re.sub(r"\W+", "_", finding.lower())
        images = pipe.generate_batched(reports, batch_size, seed, num_inference_steps, guidance_scale,
                                       output_type="pil")
        for i, (report, image) in enumerate(zip(reports, images, strict=True)):
            sid = f"syn_{slug}_{i:04d}"
            atomic_save_image(image, out / "images" / f"{sid}.png")
            rows.append({"id": sid, "patient_id": sid, "report": report, "image_path": [f"images/{sid}.png"],
                         "split": "train", "synthetic": True, "target_finding": finding})
    path = out / "synthetic.jsonl"
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def _merged_manifest(annotation: Path, synthetic: Path, out: Path) -> Path:
    """Real studies (all splits, absolute image paths) + synthetic training studies, as JSONL."""
    rows = []
    for rec in load_records(annotation):
        rows.append({**{k: v for k, v in rec.items() if k != "image_path"}, "synthetic": False,
                     "image_path": [str((annotation.parent / p).resolve()) for p in rec["image_path"]]})
    for rec in load_records(synthetic):
        rows.append({**rec, "image_path": [str((synthetic.parent / p).resolve()) for p in rec["image_path"]]})
    path = out / "real_plus_synthetic.jsonl"
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def _arm_scores(preds: dict[str, str], refs: dict[str, str], rare: Sequence[str], labeler: ReportLabeler) -> dict:
    metrics = evaluate_reports(preds, refs, labeler=labeler, meteor=False)
    ids = sorted(set(preds) & set(refs))
    per = per_label_scores(binarize(labeler.label_batch([preds[i] for i in ids])),
                           binarize(labeler.label_batch([refs[i] for i in ids])))
    keep = ("bleu_4", "rouge_l", "cider", "ce_micro_f1", "ce_macro_f1")
    out = {k: float(metrics[k]) for k in keep if k in metrics}
    for name in rare:
        out[f"rare_f1/{name}"] = per[name]["f1"]
    out["rare_f1_mean"] = float(np.mean([per[name]["f1"] for name in rare])) if rare else float("nan")
    return out


def _verdict(rare: dict[str, dict[str, float]], runs: dict[str, list[dict[str, float]]]) -> str:
    """Gain / loss when the paired difference's interval excludes 0; says so when neither arm
    ever reports a rare finding (the comparison then says nothing about the synthetic data)."""
    if all(r["rare_f1_mean"] == 0 for arm in runs.values() for r in arm):
        return "no difference: neither arm reports the rare findings in any run (rare-class F1 0)"
    d = rare["difference"]
    if not np.isfinite(d["ci_low"]):
        return "one seed: no interval"
    return "gain" if d["ci_low"] > 0 else "loss" if d["ci_high"] < 0 else "no significant difference"


def _rare_findings(cfg: AugmentExperiment, train_reports: list[str], labeler: ReportLabeler) -> list[str]:
    rare = list(cfg.findings) or pick_rare_findings(train_reports, cfg.rare_below, labeler)
    unknown = [f for f in rare if f not in PATHOLOGY_LABELS]
    if unknown:
        raise ValueError(f"unknown findings {unknown}; use names from {list(PATHOLOGY_LABELS)}")
    if not rare:
        raise ValueError(f"no finding is below {cfg.rare_below} prevalence; name them with findings=[...]")
    return rare


def _train_arms(cfg: AugmentExperiment, annotation: Path, merged: Path, refs: dict[str, str], rare: list[str],
                labeler: ReportLabeler, out: Path) -> dict[str, list[dict[str, float]]]:
    """Both arms over the seeds, each scored on the real test split."""
    runs: dict[str, list[dict[str, float]]] = {"real": [], "real+synthetic": []}
    plan = [(seed, arm, manifest) for seed in cfg.seeds
            for arm, manifest in (("real", annotation), ("real+synthetic", merged))]
    for seed, arm, manifest in tqdm(plan, desc="augment: train + score", unit="run"):
        exp = copy.deepcopy(cfg.report)
        exp.data.annotation = str(manifest)
        exp.train.seed = seed
        exp.train.output_dir = str(out / "runs" / f"{arm.replace('+', '_')}_seed{seed}")
        train_report_model(exp)
        preds = generate_reports(str(Path(exp.train.output_dir) / "best"), str(annotation), "test",
                                 num_beams=exp.decoding.num_beams)
        runs[arm].append(_arm_scores(preds, refs, rare, labeler))
        logger.info("augment %s seed %d: %s", arm, seed, runs[arm][-1])
    return runs


def _summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Means with t-intervals over seeds, and the paired per-seed difference."""
    summary: dict[str, Any] = {}
    for key in runs["real"][0]:
        row = {}
        for arm in runs:
            mean, lo, hi = mean_ci([r[key] for r in runs[arm]])
            row[arm] = {"mean": mean, "ci_low": lo, "ci_high": hi}
        diff = [b[key] - a[key] for a, b in zip(runs["real"], runs["real+synthetic"], strict=True)]
        mean, lo, hi = mean_ci(diff)
        row["difference"] = {"mean": mean, "ci_low": lo, "ci_high": hi}
        summary[key] = row
    return summary


def run_augment(cfg: AugmentExperiment, pipe: Any | None = None) -> dict[str, Any]:
    """The whole comparison; writes ``<output_dir>/augment_results.json`` and returns it."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    annotation = Path(cfg.annotation)
    records = load_records(annotation)
    train_reports = [r["report"] for r in records if r.get("split") == "train"]
    refs = {r["id"]: r["report"] for r in records if r.get("split") == "test"}
    if not train_reports or not refs:
        raise ValueError(f"{annotation} needs train and test studies")
    labeler = ReportLabeler()
    rare = _rare_findings(cfg, train_reports, labeler)
    logger.info("rare findings: %s", rare)

    # 1. synthetic studies for the rare findings
    if pipe is None:
        from report2image import ReportToCXRPipeline

        pipe = ReportToCXRPipeline.from_pretrained(cfg.diffusion)
    pipe.set_progress_bar_config(disable=True)
    pool = sentence_pool(train_reports, labeler)
    composed = {f: compose_reports(pool, f, cfg.per_finding, seed=i) for i, f in enumerate(rare)}
    synthetic = write_synthetic_manifest(pipe, composed, out / "synthetic", cfg.num_inference_steps,
                                         cfg.guidance_scale)
    merged = _merged_manifest(annotation, synthetic, out)

    # 2. both arms over the seeds; 3. intervals and the verdict
    runs = _train_arms(cfg, annotation, merged, refs, rare, labeler, out)
    summary = _summarise(runs)
    result = {"rare_findings": rare, "synthetic_studies": sum(len(v) for v in composed.values()),
              "seeds": list(cfg.seeds), "runs": runs, "summary": summary,
              "verdict": _verdict(summary["rare_f1_mean"], runs), "examples": {f: v[:3] for f, v in composed.items()}}
    atomic_write_text(out / "augment_results.json", json.dumps(result, indent=1, default=float) + "\n")
    return result
