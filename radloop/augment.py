"""``radloop augment``: rare-finding augmentation of report-model training with report2image.

1. Pick rare findings: those below ``rare_below`` prevalence among the training reports (labeler),
   or the ones named in ``findings``.
2. Compose K reports per finding from training-report sentences: one sentence the labeler reads as
   that finding being present, plus sentences of normal reports that do not mention it.
3. Generate one image per composed report with a trained ``ReportToCXRPipeline`` and write them as
   a training split with ``synthetic: true`` beside the real studies (same JSONL manifest format).
4. Train the report model on real only and on real + synthetic (same config, same seeds), score
   both on the real test split (or on ``test_annotation``'s, a data seed no training saw), and
   report per-arm means with t-intervals over seeds and the paired per-seed difference -- for the
   rare findings' clinical F1 and the overall metrics.

Optional arms separate the questions a reader asks next: ``upweight_real`` adds a real-only arm
whose rare training studies are repeated until each rare finding has as many extra training
examples as the synthetic arm adds ("more rare examples" without synthetic images), and
``amounts`` adds arms with the first k generated studies per finding of ``amount_arm`` (the amount curve),
``gate_backbone`` and ``counterfactual`` the gated and the counterfactual arms (:mod:`.augment_sources`),
and ``upweight_with`` a generated-study arm on top of the up-weighted real studies. Every arm is
compared with ``real`` (and each generated-study arm with ``real_upweighted``) by a paired
approximate-randomization test on the pooled (seed, test study) predictions
(:func:`shared.metrics.stats.approximate_randomization`).

A rerun reuses what is finished: synthetic images whose manifest matches the composed reports,
and every (arm, seed) run whose ``scores.json`` (or ``run_archive`` copy) was written for the same manifest and
recipe (:mod:`.augment_runs`).
"""

from __future__ import annotations

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

from image2report.train import ReportExperiment
from shared.data.dataset import load_records
from shared.io import atomic_write_text
from shared.labels import CHEXPERT_LABELS, PATHOLOGY_LABELS
from shared.metrics.clinical import binarize, per_label_scores
from shared.metrics.stats import approximate_randomization, mean_ci
from shared.text.labeler import ReportLabeler

from .augment_runs import PerSeed, run_tables, train_arms
from .augment_sources import (
    GATE_THRESHOLD,
    compose_reports,
    pick_rare_findings,
    sentence_pool,
    stating_sentences,
)
from .generated_images import generate_into

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
    #: synthetic studies generated per rare finding (the ``real+synthetic`` arm uses all of them)
    per_finding: int = 50
    #: more points of the amount curve: arms with the first k studies per finding of ``amount_arm``
    #: (``<amount_arm>@k``, 0 < k < per_finding)
    amounts: list[int] = field(default_factory=list)
    #: the generated-study arm the amount curve subsamples: ``real+synthetic``, ``real+gated`` or
    #: ``real+counterfactual`` (the best one, once the first seeds say which)
    amount_arm: str = "real+synthetic"
    #: also train a real-only arm whose rare training studies are repeated to add ``per_finding`` examples per
    #: rare finding -- the same extra exposures as the synthetic arm, without synthetic images
    upweight_real: bool = False
    #: generated-study arms (``real+synthetic``, ``real+gated``, ``real+counterfactual``) also trained with the
    #: real rare studies up-weighted as in ``real_upweighted`` (arm ``<arm>+upweighted``, compared with both):
    #: whether the two sources of rare examples add up; needs ``upweight_real``
    upweight_with: list[str] = field(default_factory=list)
    #: score on this annotation's test split (e.g. a fresh data seed) instead of ``annotation``'s
    test_annotation: str | None = None
    #: seeds of the amount curve's arms (empty: ``seeds``); the main arms always run ``seeds``
    amount_seeds: list[int] = field(default_factory=list)
    #: resamples of the paired approximate-randomization test against the ``real`` arm (0: no test)
    significance_samples: int = 1000
    #: the quality gate's reader: a RadCLIP or tower pre-trainer folder whose findings head reads every synthetic
    #: image (an independent reader, never the judge); adds the arm ``real+gated``: the synthetic studies it reads
    #: the finding in. It also reads the counterfactual edits (``gate.counterfactual``: how often it sees the added
    #: finding), which their arm keeps all of
    gate_backbone: str | None = None
    gate_threshold: float = GATE_THRESHOLD
    #: real studies (an annotation; its test split) the gate's reader also reads at ``gate_threshold``: the share
    #: of real cases of each finding it keeps, the reference for the synthetic acceptance rates (``gate.real``)
    gate_reference: str | None = None
    #: add the arm ``real+counterfactual``: each rare finding added to ``per_finding`` real training images by
    #: masked editing (the real anatomy kept, the edited report as the label)
    counterfactual: bool = False
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    #: a folder kept with the code (committed) where each finished run is also written with its predictions
    #: (``<arm>_seed<k>.json.gz``): a rerun on a fresh machine reuses it (:mod:`.augment_runs`)
    run_archive: str | None = None
    #: sampling of the synthetic images (None: the pipeline's saved defaults)
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    #: the report-model experiment both arms train with (its ``train.output_dir`` is replaced per arm)
    report: ReportExperiment = field(default_factory=ReportExperiment)


def write_synthetic_manifest(pipe: Any, reports_by_finding: dict[str, list[str]], out_dir: str | os.PathLike[str],
                             num_inference_steps: int | None = None, guidance_scale: float | None = None,
                             seed: int = 0, batch_size: int = 32) -> Path:
    """Generate one image per report; write ``images/<finding>/*.png`` and ``synthetic.jsonl`` (split train).

    Each finding's images are one request of :func:`radloop.generated_images.generate_into` (sampling settings
    unset: the pipeline's saved ones), so a rerun keeps what the same request drew and redraws what changed.
    """
    out = Path(out_dir)
    rows = []
    for finding, reports in tqdm(reports_by_finding.items(), desc="augment: synthetic images", unit="finding"):
        slug = re.sub(r"\W+", "_", finding.lower())
        names = [f"syn_{slug}_{i:04d}" for i in range(len(reports))]
        generate_into(out / "images" / slug, reports, names, pipe=pipe, seed=seed, batch_size=batch_size,
                      num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, replace=True)
        rows += [{"id": sid, "patient_id": sid, "report": report, "image_path": [f"images/{slug}/{sid}.png"],
                  "split": "train", "synthetic": True, "target_finding": finding}
                 for sid, report in zip(names, reports, strict=True)]
    path = out / "synthetic.jsonl"
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def _absolute(rec: dict[str, Any], root: Path) -> dict[str, Any]:
    return {**rec, "image_path": [str((root / p).resolve()) for p in rec["image_path"]]}


def _write_manifest(rows: list[dict[str, Any]], path: Path) -> Path:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def _real_rows(annotation: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The annotation's ``records`` (all splits) with absolute image paths, marked ``synthetic: false``."""
    return [{**_absolute(rec, annotation.parent), "synthetic": False} for rec in records]


def _synthetic_rows(synthetic: Path, per_finding: int) -> list[dict[str, Any]]:
    """The first ``per_finding`` synthetic studies of each finding (the amount curve's nested subsets)."""
    taken: dict[str, int] = {}
    rows = []
    for rec in load_records(synthetic):
        finding = rec["target_finding"]
        if taken.get(finding, 0) < per_finding:
            taken[finding] = taken.get(finding, 0) + 1
            rows.append(_absolute(rec, synthetic.parent))
    return rows


def upweighted_rows(real: list[dict[str, Any]], rare: Sequence[str], extra: int,
                    labeler: ReportLabeler) -> list[dict[str, Any]]:
    """``extra`` repeats per rare finding of the real training studies whose report states it (cycling
    through them in order), as new training rows ``<id>_rep<k>`` on the same images and patient.

    Raises ValueError when no real training report states one of the findings.
    """
    train = [r for r in real if r.get("split") == "train"]
    pos = binarize(labeler.label_batch([r["report"] for r in train]))
    rows = []
    for name in rare:
        stating = [r for r, row in zip(train, pos, strict=True) if row[CHEXPERT_LABELS.index(name)]]
        if not stating:
            raise ValueError(f"no real training report states '{name}': nothing to up-weight")
        for k in range(extra):
            rec = stating[k % len(stating)]
            rows.append({**rec, "id": f"{rec['id']}_rep{k // len(stating)}_{name.lower().replace(' ', '_')}",
                         "upweighted": True})
    return rows


def _rare_f1(rare: Sequence[str]):
    """Mean F1 over the rare findings of boolean label rows (a metric for the paired test): the same
    :func:`per_label_scores` that :func:`.augment_runs.arm_scores` reports."""
    idx = [CHEXPERT_LABELS.index(n) for n in rare]

    def metric(pred: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> float:
        per = per_label_scores(np.stack(pred)[:, idx], np.stack(ref)[:, idx], rare)
        return float(np.mean([per[n]["f1"] for n in rare]))

    return metric


def _verdict(rare: dict[str, dict[str, float]], runs: PerSeed, arm: str = "real+synthetic",
             baseline: str = "real", test: dict[str, float] | None = None) -> str:
    """Gain / loss of ``arm`` over ``baseline`` when the seed-paired difference's interval excludes 0 and, when
    the study-level paired test ran (``test``), its p-value is below 0.05 too; says so when neither arm ever
    reports a rare finding (the comparison then says nothing about the synthetic data)."""
    if all(r["rare_f1_mean"] == 0 for name in (baseline, arm) for r in runs[name].values()):
        return "no difference: neither arm reports the rare findings in any run (rare-class F1 0)"
    d = rare[_difference_key(arm, baseline)]
    if not np.isfinite(d["ci_low"]):
        return "one seed: no interval"
    if d["ci_low"] <= 0 <= d["ci_high"]:
        return "no significant difference"
    direction = "gain" if d["ci_low"] > 0 else "loss"
    if test is not None and test["p_value"] >= 0.05:
        return (f"no significant difference (the seed-paired interval excludes 0, a {direction}, but the "
                f"study-level paired test gives p = {test['p_value']:.2f})")
    return direction


def _difference_key(arm: str, baseline: str = "real") -> str:
    return f"difference/{arm}" if baseline == "real" else f"difference/{arm} - {baseline}"


#: the arms that add generated studies (each is also compared with the up-weighted real arm)
SOURCE_ARMS = ("real+synthetic", "real+gated", "real+counterfactual")


def _compared(arms: Sequence[str]) -> list[tuple[str, str]]:
    """(arm, baseline) pairs: every arm against ``real``; each generated source against the up-weighted arm."""
    pairs = [(arm, "real") for arm in arms if arm != "real"]
    if "real_upweighted" in arms:
        pairs += [(arm, "real_upweighted") for arm in arms if arm in SOURCE_ARMS or arm.endswith("+upweighted")]
    return pairs


def _check_config(cfg: AugmentExperiment) -> None:
    """Before anything is generated: ``upweight_with`` names arms this config makes, beside ``real_upweighted``;
    ``gate_reference`` is a file, with a gate to measure."""
    if cfg.gate_reference and not cfg.gate_backbone:
        raise ValueError(f"gate_reference={cfg.gate_reference}: set gate_backbone too (the reader it measures)")
    if cfg.gate_reference and not Path(cfg.gate_reference).is_file():
        raise FileNotFoundError(f"gate_reference: no annotation at {cfg.gate_reference}")
    made = ["real+synthetic"] + ["real+gated"] * bool(cfg.gate_backbone) + ["real+counterfactual"] * cfg.counterfactual
    if cfg.amount_arm not in made:
        raise ValueError(f"amount_arm: {cfg.amount_arm!r} is not a generated-study arm this config makes ({made})")
    unknown = [name for name in cfg.upweight_with if name not in made]
    if unknown or (cfg.upweight_with and not cfg.upweight_real):
        raise ValueError(f"upweight_with: {unknown or list(cfg.upweight_with)} must name generated-study arms this "
                         f"config makes ({made}), with upweight_real=true")


def _rare_findings(cfg: AugmentExperiment, train_reports: list[str], labeler: ReportLabeler) -> list[str]:
    rare = list(cfg.findings) or pick_rare_findings(train_reports, cfg.rare_below, labeler)
    unknown = [f for f in rare if f not in PATHOLOGY_LABELS]
    if unknown:
        raise ValueError(f"unknown findings {unknown}; use names from {list(PATHOLOGY_LABELS)}")
    if not rare:
        raise ValueError(f"no finding is below {cfg.rare_below} prevalence; name them with findings=[...]")
    return rare


def _arm_manifests(cfg: AugmentExperiment, annotation: Path, real: list[dict[str, Any]], synthetic: Path,
                   rare: list[str], labeler: ReportLabeler, out: Path,
                   sources: dict[str, Path] | None = None) -> dict[str, Path]:
    """Every arm's training manifest: ``real`` is the annotation itself (``real``: its records with absolute image
    paths, :func:`_real_rows`); ``sources``: more arms (name -> a manifest of generated studies with
    ``target_finding``) added to the real studies."""
    # the generated studies each arm adds to the real ones
    manifests = {"real+synthetic": synthetic, **(sources or {})}
    added = {name: _synthetic_rows(manifest, cfg.per_finding) for name, manifest in manifests.items()}
    # the two baselines first: runs go seed by seed in this order, so a stopped experiment has both
    arms: dict[str, Path] = {"real": annotation}
    repeats = upweighted_rows(real, rare, cfg.per_finding, labeler) if cfg.upweight_real else []
    if cfg.upweight_real:
        arms["real_upweighted"] = _write_manifest(real + repeats, out / "real_upweighted.jsonl")
    arms.update({name: _write_manifest(real + rows, out / f"{name.replace('+', '_plus_')}.jsonl")
                 for name, rows in added.items()})
    for name in cfg.upweight_with:  # _check_config: only with upweight_real
        arms[f"{name}+upweighted"] = _write_manifest(real + repeats + added[name],
                                                     out / f"{name.replace('+', '_plus_')}_upweighted.jsonl")
    for k in sorted(set(cfg.amounts)):
        if not 0 < k < cfg.per_finding:
            raise ValueError(f"amounts: {k} is not between 0 and per_finding={cfg.per_finding} (exclusive)")
        arms[f"{cfg.amount_arm}@{k}"] = _write_manifest(real + _synthetic_rows(manifests[cfg.amount_arm], k),
                                                        out / f"{cfg.amount_arm.replace('+', '_plus_')}_{k}.jsonl")
    return arms


def _other_sources(cfg: AugmentExperiment, pipe: Any, synthetic: Path, real: list[dict[str, Any]],
                   pool: tuple[list[str], np.ndarray], rare: list[str], labeler: ReportLabeler,
                   out: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """The gated synthetic studies and the counterfactual edits, when the config asks for them: (arm -> manifest,
    the gate's acceptance rates)."""
    from .augment_sources import findings_reader, gate_on_real, gate_synthetic, write_counterfactual_manifest

    sources: dict[str, Path] = {}
    gate: dict[str, Any] = {}
    if cfg.gate_backbone:
        reader, size = findings_reader(cfg.gate_backbone), int(getattr(pipe, "image_size", 64))
        gated = gate_synthetic(synthetic, reader, cfg.gate_threshold, size)
        sources["real+gated"] = gated.manifest
        gate = {"reader": cfg.gate_backbone, "threshold": cfg.gate_threshold, "findings": gated.findings}
        if cfg.gate_reference:
            gate["real"] = gate_on_real(reader, cfg.gate_reference, rare, cfg.gate_threshold, size, labeler=labeler)
    if cfg.counterfactual:
        train = [r for r in real if r.get("split") == "train"]
        sentences = {f: stating_sentences(pool, f) for f in rare}
        sources["real+counterfactual"] = edits = write_counterfactual_manifest(
            pipe, train, Path("."), sentences, cfg.per_finding, out / "counterfactual", labeler)
        if cfg.gate_backbone:
            # how often the same reader sees the added finding in an edit (read only: the arm keeps every edit)
            gate["counterfactual"] = gate_synthetic(edits, reader, cfg.gate_threshold, size).findings
    return sources, gate


def _summarise(runs: PerSeed) -> dict[str, Any]:
    """Means with t-intervals over seeds per arm, and the paired differences of :func:`_compared` over the
    seeds both arms ran."""
    summary: dict[str, Any] = {}
    for key in next(iter(runs["real"].values())):
        row = {}
        for arm in runs:
            mean, lo, hi = mean_ci([r[key] for r in runs[arm].values()])
            row[arm] = {"mean": mean, "ci_low": lo, "ci_high": hi}
        for arm, base in _compared(list(runs)):
            diff = [runs[arm][seed][key] - runs[base][seed][key] for seed in runs[arm] if seed in runs[base]]
            mean, lo, hi = mean_ci(diff)
            row[_difference_key(arm, base)] = {"mean": mean, "ci_low": lo, "ci_high": hi, "seeds": len(diff)}
        summary[key] = row
    return summary


def _significance(preds_by: PerSeed, refs: dict[str, str], rare: list[str], labeler: ReportLabeler,
                  samples: int) -> dict[str, dict[str, float]]:
    """Paired approximate randomization of the rare findings' mean F1, every arm against ``real`` and
    ``real+synthetic`` against ``real_upweighted``: the (seed, test study) pairs of the seeds both arms ran,
    pooled."""
    ids = sorted(refs)
    # every distinct text labelled once: the runs' predictions repeat each other (and the references) a lot
    texts = sorted({refs[i] for i in ids} | {p[i] for by_seed in preds_by.values() for p in by_seed.values()
                                             for i in ids})
    labels = dict(zip(texts, binarize(labeler.label_batch(texts)), strict=True))
    ref_rows = [labels[refs[i]] for i in ids]
    rows = {arm: {seed: [labels[p[i]] for i in ids] for seed, p in by_seed.items()}
            for arm, by_seed in preds_by.items()}
    metric = _rare_f1(rare)
    out = {}
    for a, b in _compared(list(rows)):
        common = [seed for seed in rows[a] if seed in rows[b]]
        pooled_a = [row for seed in common for row in rows[a][seed]]
        pooled_b = [row for seed in common for row in rows[b][seed]]
        out[f"{a} vs {b}"] = {**approximate_randomization(metric, pooled_a, pooled_b, ref_rows * len(common),
                                                          n=samples), "seeds": len(common)}
    return out


def _amount_curve(cfg: AugmentExperiment, summary: dict[str, Any]) -> list[dict[str, float]]:
    rare = summary["rare_f1_mean"]
    points = [(0, "real"), *((k, f"{cfg.amount_arm}@{k}") for k in sorted(set(cfg.amounts))),
              (cfg.per_finding, cfg.amount_arm)]
    return [{"arm": arm, "synthetic_per_finding": k, "rare_f1_mean": rare[arm]["mean"], "ci_low": rare[arm]["ci_low"],
             "ci_high": rare[arm]["ci_high"], "ce_macro_f1": summary["ce_macro_f1"][arm]["mean"]}
            for k, arm in points]


def run_augment(cfg: AugmentExperiment, pipe: Any | None = None) -> dict[str, Any]:
    """The whole comparison; writes ``<output_dir>/augment_results.json`` and returns it."""
    _check_config(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    annotation = Path(cfg.annotation)
    records = load_records(annotation)
    test = Path(cfg.test_annotation) if cfg.test_annotation else annotation
    train_reports = [r["report"] for r in records if r.get("split") == "train"]
    refs = {r["id"]: r["report"] for r in load_records(test) if r.get("split") == "test"}
    if not train_reports:
        raise ValueError(f"{annotation} has no training studies")
    if not refs:
        raise ValueError(f"{test} has no test studies")
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
    real = _real_rows(annotation, records)
    sources, gate = _other_sources(cfg, pipe, synthetic, real, pool, rare, labeler, out)
    arms = _arm_manifests(cfg, annotation, real, synthetic, rare, labeler, out, sources)

    # 2. every arm over the seeds; 3. intervals, the paired test and the verdict
    runs, preds_by, minutes = train_arms(cfg, arms, test, refs, rare, labeler, out)
    summary = _summarise(runs)
    result = {"rare_findings": rare, "synthetic_studies": sum(len(v) for v in composed.values()),
              "seeds": list(cfg.seeds), "arms": list(arms), "test_annotation": str(test), "test_studies": len(refs),
              **run_tables(runs, minutes), "summary": summary,
              "examples": {f: v[:3] for f, v in composed.items()}, **({"gate": gate} if gate else {})}
    tests = {}
    if cfg.significance_samples and len(preds_by["real"]) and len(arms) > 1:
        result["significance"] = tests = _significance(preds_by, refs, rare, labeler, cfg.significance_samples)
    result["verdict"] = _verdict(summary["rare_f1_mean"], runs, test=tests.get("real+synthetic vs real"))
    if "real_upweighted" in arms:
        result["verdict_vs_upweighted"] = _verdict(summary["rare_f1_mean"], runs, "real+synthetic", "real_upweighted",
                                                   tests.get("real+synthetic vs real_upweighted"))
    for arm in [a for a in arms if a in SOURCE_ARMS[1:] or a.endswith("+upweighted")]:
        result.setdefault("verdicts", {})[arm] = _verdict(summary["rare_f1_mean"], runs, arm,
                                                          test=tests.get(f"{arm} vs real"))
        if "real_upweighted" in arms:
            result.setdefault("verdicts_vs_upweighted", {})[arm] = _verdict(
                summary["rare_f1_mean"], runs, arm, "real_upweighted", tests.get(f"{arm} vs real_upweighted"))
    if cfg.amounts:
        result["amount_curve"] = _amount_curve(cfg, summary)
    atomic_write_text(out / "augment_results.json", json.dumps(result, indent=1, default=float) + "\n")
    return result
