"""``radloop demo``: the whole loop on SynthCXR on a CPU, ending in ``<out>/report.html``.

Stages: SynthCXR data -> backbone -> report model -> classifier (the judge) -> diffusion ->
evaluation -> counterfactuals -> augmentation -> round trip -> HTML report. Every number in the
report is measured in this run and also written to ``<out>/results.json``; the per-stage times
are printed at the end. ``--quick`` uses tiny models and data (the test suite runs it).
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.classifier import Judge
from evaluation.image_eval import build_feature_extractor, load_image_set
from evaluation.images import extract_features, fid_report
from evaluation.loop import counterfactual_metrics
from evaluation.reports import evaluate_reports
from evaluation.train_classifier import (
    ClassifierDataConfig,
    ClassifierExperiment,
    ClassifierModelConfig,
    train_classifier,
)
from image2report.decoding import DecodingConfig
from image2report.generator import ReportGenerator
from image2report.train import ReportDataConfig, ReportExperiment, ReportModelConfig, train_report_model
from report2image import ReportToCXRPipeline
from report2image.train import (
    AutoencoderTrainConfig,
    DiffusionDataConfig,
    DiffusionExperiment,
    DiffusionLossConfig,
    DiffusionModelConfig,
    train_diffusion,
)
from shared.backbone.train import BackboneDataConfig, BackboneExperiment, BackboneModelConfig, train_backbone
from shared.config import atomic_write_text
from shared.data.synthcxr import SynthConfig, counterfactual_edits, generate_dataset, read_attributes
from shared.labels import CHEXPERT_LABELS, PATHOLOGY_LABELS
from shared.metrics import multilabel_auroc
from shared.training import TrainConfig

from . import html_report as H
from .augment import AugmentExperiment, run_augment
from .roundtrip import RoundTrip

logger = logging.getLogger(__name__)

__all__ = ["DemoSizes", "QUICK", "FULL", "run_demo"]


@dataclass
class DemoSizes:
    patients: int
    studies: int
    size: int
    backbone: str
    backbone_steps: int
    report_model: str
    report_steps: int
    classifier: str
    classifier_steps: int
    ldm: str
    autoencoder_steps: int
    unet_steps: int
    batch_size: int
    n_eval: int
    edits: int
    augment_per_finding: int
    augment_seeds: list[int] = field(default_factory=lambda: [0, 1])
    augment_report_steps: int = 100
    roundtrip_n: int = 32
    sample_steps: int = 20
    #: longest report (tokens) the report model writes; validation studies decoded during training
    max_length: int = 100
    val_samples: int = 50


QUICK = DemoSizes(patients=30, studies=2, size=32, backbone="radclip_tiny", backbone_steps=3,
                  report_model="baseline_tiny", report_steps=3, classifier="classifier_tiny", classifier_steps=3,
                  ldm="ldm_tiny", autoencoder_steps=3, unet_steps=4, batch_size=8, n_eval=8, edits=4,
                  augment_per_finding=3, augment_report_steps=2, roundtrip_n=4, sample_steps=3, max_length=40,
                  val_samples=8)
# About 8 minutes on a 2-core CPU (the per-stage times are printed and in results.json), so that
# `make demo` on a fresh clone, install included, stays near 10 minutes.
FULL = DemoSizes(patients=300, studies=3, size=64, backbone="radclip_small", backbone_steps=100,
                 report_model="baseline_small", report_steps=150, classifier="classifier_small", classifier_steps=100,
                 ldm="ldm_small", autoencoder_steps=100, unet_steps=120, batch_size=32, n_eval=100, edits=16,
                 augment_per_finding=20, augment_report_steps=40, roundtrip_n=24, sample_steps=20)


def _train_cfg(out: Path, steps: int, lr: float, seed: int) -> TrainConfig:
    return TrainConfig(output_dir=str(out), max_steps=steps, learning_rate=lr, eval_every=steps,
                       checkpoint_every=steps, log_every=max(steps // 10, 1), warmup_steps=min(20, steps // 5),
                       seed=seed, checkpoints_total_limit=1)


def _history(run: Path) -> list[dict[str, float]]:
    path = run / "history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _rows_by_finding(labels: np.ndarray, per_row: int) -> list[tuple[str, list[int]]]:
    """Up to ``per_row`` study indices for each finding present (normal studies under No Finding)."""
    out = []
    for name in ("No Finding", *PATHOLOGY_LABELS):
        idx = np.flatnonzero(labels[:, CHEXPERT_LABELS.index(name)] == 1)[:per_row].tolist()
        if idx:
            out.append((name, idx))
    return out


def run_demo(out: str | Path, quick: bool = False, seed: int = 0,
             echo: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Run every stage; write ``report.html`` and ``results.json`` under ``out``; return the results."""
    sizes = QUICK if quick else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    annotation = str(data / "annotation.json")
    times: list[tuple[str, float]] = []
    results: dict[str, Any] = {"mode": "quick" if quick else "full", "seed": seed}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        echo(f"[demo] {name} ...")
        start = time.perf_counter()
        value = fn()
        times.append((name, time.perf_counter() - start))
        return value

    # 1. data
    synth = SynthConfig(patients=sizes.patients, studies_per_patient=sizes.studies, size=sizes.size, seed=seed)
    if quick:  # enough positives of every finding in a tiny set
        synth.prevalence = {k: max(v, 0.15) for k, v in synth.prevalence.items()}
    stage("SynthCXR data", lambda: generate_dataset(data, synth, overwrite=True, progress=True))

    # 2-5. models
    stage("backbone", lambda: train_backbone(BackboneExperiment(
        BackboneDataConfig(annotation=annotation, batch_size=max(sizes.batch_size, 16)),
        BackboneModelConfig(name=sizes.backbone), _train_cfg(out / "backbone", sizes.backbone_steps, 5e-4, seed))))
    report_exp = ReportExperiment(
        ReportDataConfig(annotation=annotation, image_size=sizes.size, batch_size=sizes.batch_size,
                         val_samples=sizes.val_samples, max_length=sizes.max_length),
        ReportModelConfig(name=sizes.report_model), DecodingConfig(num_beams=1, max_length=sizes.max_length),
        _train_cfg(out / "report", sizes.report_steps, 5e-4, seed))
    stage("report model", lambda: train_report_model(report_exp))
    stage("classifier (judge)", lambda: train_classifier(ClassifierExperiment(
        ClassifierDataConfig(annotation=annotation, image_size=sizes.size, batch_size=sizes.batch_size * 2),
        ClassifierModelConfig(name=sizes.classifier), _train_cfg(out / "classifier", sizes.classifier_steps, 1e-3, seed))))
    stage("diffusion", lambda: train_diffusion(DiffusionExperiment(
        DiffusionDataConfig(annotation=annotation, batch_size=sizes.batch_size),
        DiffusionModelConfig(name=sizes.ldm, backbone=str(out / "backbone" / "best")),
        DiffusionLossConfig(filter_warmup=max(sizes.unet_steps // 3, 1)),
        AutoencoderTrainConfig(steps=sizes.autoencoder_steps, batch_size=sizes.batch_size),
        _train_cfg(out / "diffusion", sizes.unet_steps, 3e-4, seed))))

    pipe = ReportToCXRPipeline.from_pretrained(out / "diffusion" / "best")
    pipe.set_progress_bar_config(disable=True)
    generator = ReportGenerator.from_pretrained(out / "report" / "best",
                                                DecodingConfig(num_beams=1, max_length=sizes.max_length))
    classify = Judge.from_pretrained(out / "classifier" / "best")

    trip = RoundTrip(pipe, generator, sizes.sample_steps, 3.0, seed)
    test = load_image_set(annotation, "test", sizes.size, "file")
    n = min(sizes.n_eval, len(test["reports"]))

    # 6. evaluation of both directions on the test split
    def evaluate() -> dict[str, Any]:
        with torch.no_grad():
            gen_reports = trip.image_to_report(test["images"][:n])
            gen_images = trip.report_to_image(test["reports"][:n])
        refs = {test["ids"][i]: test["reports"][i] for i in range(n)}
        preds = {test["ids"][i]: gen_reports[i] for i in range(n)}
        rep = evaluate_reports(preds, refs)
        labels = test["labels"][:n]
        auc_gen = multilabel_auroc(classify(gen_images).numpy(), labels, CHEXPERT_LABELS)
        auc_real = multilabel_auroc(classify(test["images"][:n]).numpy(), labels, CHEXPERT_LABELS)
        extractor = build_feature_extractor(f"backbone:{out / 'backbone' / 'best'}")
        fid = fid_report(extract_features(extractor, test["images"]), extract_features(extractor, gen_images))
        return {"reports": rep, "gen_reports": gen_reports, "gen_images": gen_images,
                "images": {"mauc_generated": auc_gen["mauc"], "mauc_real": auc_real["mauc"], **fid}}

    ev = stage("evaluation", evaluate)

    # 7. counterfactuals against SynthCXR's true counterfactuals
    def counterfactuals() -> dict[str, Any]:
        edits = counterfactual_edits(data, "test", sizes.edits, seed)
        source = torch.stack([torch.from_numpy(e.source)[None] for e in edits])
        truth = torch.stack([torch.from_numpy(e.true_cf)[None] for e in edits])
        edited = pipe.counterfactual(source, [e.new_report for e in edits], [e.source_report for e in edits],
                                     strength=0.6, num_inference_steps=max(sizes.sample_steps, 10),
                                     output_type="pt").images
        metrics = counterfactual_metrics(source, edited, truth, classify, [e.added for e in edits],
                                         [e.removed for e in edits])
        return {"edits": edits, "edited": edited, "metrics": {k: v for k, v in metrics.items() if k != "per_edit"}}

    cf = stage("counterfactuals", counterfactuals)

    # 8. augmentation: the two rarest findings in the training reports
    counts = {name: 0 for name in PATHOLOGY_LABELS}
    for rec in read_attributes(data):
        if rec["split"] == "train":
            for f in rec["findings"]:
                if f["name"] in counts:  # Support Devices is not a pathology
                    counts[f["name"]] += 1
    rare = [k for k, v in sorted(counts.items(), key=lambda kv: (kv[1], kv[0])) if v > 0][:2]
    aug_report = ReportExperiment(report_exp.data, report_exp.model, report_exp.decoding,
                                  _train_cfg(out / "augment", sizes.augment_report_steps, 5e-4, seed))
    aug_report.train.progress = False
    aug = stage("augmentation", lambda: run_augment(AugmentExperiment(
        annotation=annotation, output_dir=str(out / "augment"), findings=rare,
        per_finding=sizes.augment_per_finding, seeds=list(sizes.augment_seeds),
        num_inference_steps=sizes.sample_steps, report=aug_report), pipe=pipe))

    # 9. round trip
    def roundtrip() -> dict[str, Any]:
        k = min(sizes.roundtrip_n, n)
        rt_reports, rt_images = trip.both(test["reports"][:k], test["images"][:k])
        return {"reports": rt_reports, "images": rt_images}

    rt = stage("round trip", roundtrip)

    # 10. the HTML report
    results.update(
        report_metrics={k: v for k, v in ev["reports"].items() if isinstance(v, (int, float))},
        image_metrics=ev["images"], counterfactual_metrics=cf["metrics"],
        augmentation={"rare_findings": aug["rare_findings"], "verdict": aug["verdict"], "summary": aug["summary"]},
        roundtrip={"report": {k: v for k, v in rt["reports"].items() if isinstance(v, (int, float))},
                   "image": {k: v for k, v in rt["images"].items() if isinstance(v, (int, float))},
                   "per_finding": rt["reports"]["per_finding"]},
    )
    stage("HTML report", lambda: _write_html(out, sizes, test, n, ev, cf, aug, rt, times, results))
    results["stage_seconds"] = {name: round(sec, 1) for name, sec in times}
    results["total_seconds"] = round(sum(sec for _, sec in times), 1)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=float) + "\n")
    return results


def _write_html(out: Path, sizes: DemoSizes, test: dict, n: int, ev: dict, cf: dict, aug: dict, rt: dict,
                times: list[tuple[str, float]], results: dict) -> None:
    from shared.text.labeler import ReportLabeler

    labeler = ReportLabeler()
    real = test["images"][:n, 0].numpy()
    fake = ev["gen_images"][:, 0].numpy()
    sections: dict[str, tuple[str, str]] = {}
    sections["stages"] = ("Stages and times", H.metric_table(
        [(name, f"{sec:.1f}") for name, sec in times] + [("total (before this page)", f"{sum(t for _, t in times):.1f}")],
        ("stage", "seconds")))
    img = results["image_metrics"]
    rep = results["report_metrics"]
    tables = "<h3>image -> report (test split)</h3>" + H.metric_table(
        {k: rep[k] for k in ("n", "bleu_1", "bleu_4", "meteor", "rouge_l", "cider", "ce_micro_f1", "ce_macro_f1",
                             "unique_report_rate") if k in rep})
    tables += "<h3>report -> image (test reports)</h3>" + H.metric_table(
        {"classifier mAUC on generated images": img["mauc_generated"],
         "classifier mAUC on the real images (ceiling)": img["mauc_real"],
         "FID (backbone features)": img["fid"], "FID real vs real (floor)": img["fid_floor"],
         "FID / floor": img["fid_over_floor"], "KID": img["kid_mean"]})
    tables += "<h3>counterfactual edits</h3>" + H.metric_table(cf["metrics"])
    sections["metrics"] = ("Metrics", tables)
    grid_rows, captions = [], []
    blank = np.ones_like(real[0])
    for name, idx in _rows_by_finding(test["labels"][:n], 4):
        pad = [blank] * (4 - len(idx))  # keep the generated block in the same columns on every row
        grid_rows.append([real[i] for i in idx] + pad + [blank] + [fake[i] for i in idx])
        captions.append(html.escape(name))
    sections["images"] = ("Real vs generated, per finding", (
        "<p class=\"note\">Each row: up to 4 real test images with the finding (left), then the images generated "
        f"from the same reports (right). Rows: {', '.join(captions)}.</p>"
        f"<img src=\"{H.png_data_uri(H.image_grid(grid_rows))}\" alt=\"real vs generated\">"))
    cf_rows, cf_text = [], []
    for e, edited in zip(cf["edits"], cf["edited"][:, 0].numpy(), strict=True):
        diff = np.abs(edited - e.source)
        cf_rows.append([e.source, edited, e.true_cf, diff / max(float(diff.max()), 1e-6)])
        change = ", ".join([f"+{a}" for a in e.added] + [f"-{r}" for r in e.removed])
        cf_text.append((e.study_id, change, e.new_report))
    sections["counterfactuals"] = ("Counterfactuals", (
        "<p class=\"note\">Columns: source, edited, true counterfactual (SynthCXR re-rendered with the new "
        "findings), |edited - source|.</p>"
        f"<img src=\"{H.png_data_uri(H.image_grid(cf_rows))}\" alt=\"counterfactual rows\">"
        + H.metric_table(cf_text, ("study", "edit", "new report"))))
    rows = []
    for i in range(min(n, 12)):
        ref_pos = H.positive_findings(test["reports"][i], labeler)
        rows.append(f"<tr><td>{html.escape(test['ids'][i])}</td><td>{H.highlight_findings(test['reports'][i], labeler)}"
                    f"</td><td>{H.highlight_findings(ev['gen_reports'][i], labeler, ref_pos)}</td></tr>")
    sections["reports"] = ("Generated reports", (
        "<p class=\"note\">Findings the labeler reads are marked; in generated reports green = also in the "
        "reference, red = not in the reference.</p><table><tr><th>study</th><th>reference</th><th>generated</th>"
        "</tr>" + "".join(rows) + "</table>"))
    rr, ri = rt["reports"], rt["images"]
    rt_html = H.metric_table({"report round trip: label-set agreement": rr["label_set_agreement"],
                              "report round trip: CE micro-F1": rr["ce_micro_f1"],
                              "image round trip: embedding cosine": ri["embedding_cosine"],
                              "image round trip: SSIM": ri["ssim"]})
    rt_html += H.metric_table([(k, v["n"], v["survival"]) for k, v in rr["per_finding"].items()],
                              ("finding", "n", "survives report->image->report"))
    rt_html += "<h4>worst report round trips</h4>" + H.metric_table(
        [(w["label_errors"], w["input"], w["output"]) for w in rr["worst"]], ("label errors", "input", "output"))
    k = min(len(ri["reports"]), 6)
    pairs = [[test["images"][i, 0].numpy() for i in range(k)], [ri["regenerated"][i, 0].numpy() for i in range(k)]]
    rt_html += ("<h4>image -> report -> image (top: inputs, bottom: regenerated from the generated reports)</h4>"
                f"<img src=\"{H.png_data_uri(H.image_grid(pairs))}\" alt=\"image round trips\">"
                + H.metric_table([(i, ri["reports"][i]) for i in range(k)], ("image", "generated report")))
    sections["roundtrip"] = ("Round trip", rt_html)
    summ = aug["summary"]
    aug_rows = [(key, v["real"]["mean"], v["real+synthetic"]["mean"], v["difference"]["mean"],
                 f"[{v['difference']['ci_low']:.3f}, {v['difference']['ci_high']:.3f}]") for key, v in summ.items()]
    sections["augmentation"] = ("Rare-finding augmentation", (
        f"<p>Rare findings: {html.escape(', '.join(aug['rare_findings']))}; {aug['synthetic_studies']} synthetic "
        f"studies; seeds {aug['seeds']}. Verdict on the rare findings' clinical F1: <b>{html.escape(aug['verdict'])}</b>"
        "</p>" + H.metric_table(aug_rows, ("metric", "real", "real+synthetic", "difference", "95% CI of difference"))
        + "<h4>composed reports (examples)</h4>"
        + H.metric_table([(f, r) for f, rs in aug["examples"].items() for r in rs], ("finding", "report"))))
    histories = {name: _history(out / name) for name in ("backbone", "report", "classifier", "diffusion")}
    selection = {"backbone": "i2t_label_precision@5", "report": "ce_micro_f1", "classifier": "mauc",
                 "diffusion": "denoising_loss"}
    curves = H.curves_png(histories, selection)
    curves.save(out / "training_curves.png")
    sections["curves"] = ("Training curves", f"<img src=\"{H.png_data_uri(curves)}\" alt=\"training curves\">")
    intro = (f"RadLoop demo on SynthCXR ({results['mode']} mode, seed {results['seed']}): {sizes.patients} patients, "
             f"{sizes.size} px, CPU. Every number below was measured in this run; results.json holds them all.")
    atomic_write_text(out / "report.html", H.render_html("RadLoop demo report", sections, intro))


def non_finite(obj: Any, path: str = "") -> list[str]:
    """The paths of every NaN/inf number in a nested structure (the demo test wants none)."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in non_finite(v, f"{path}/{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in non_finite(v, f"{path}/{i}")]
    if isinstance(obj, float) and not math.isfinite(obj):
        return [path]
    return []
