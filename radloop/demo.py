"""``radloop demo``: the whole loop on SynthCXR on a CPU, ending in ``<out>/report.html``.

By default the demo starts from the model zoo (:data:`ZOO_MODELS`: the diffusion model, a report
decoder, the judge and the backbone, all trained once to convergence): fresh SynthCXR data ->
evaluation -> counterfactuals -> synthetic cases of the two rarest findings, each read by the
augmentation's quality gate -> round trip -> HTML report. The augmentation answer (decoders trained
on real vs real + synthetic data over seeds: hours, not a demo's minutes) is the zoo's precomputed
one (``zoo/synthcxr64/augmentation.json``), labelled as precomputed on the page and in ``results.json``.
``--from-scratch`` trains every model for seconds instead (backbone -> report model -> classifier
-> diffusion), and ``--quick`` does that with tiny models and data (the test suite runs it). Every
number in the report is measured in this run and also written to ``<out>/results.json``; the
per-stage times are printed at the end.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
from shared.data.dataset import load_records
from shared.io import atomic_write_text
from shared.labels import CHEXPERT_LABELS, PATHOLOGY_LABELS
from shared.metrics import multilabel_auroc
from shared.training import TrainConfig
from shared.zoo import resolve_zoo, zoo_root
from synthcxr import SynthConfig, counterfactual_edits, generate_dataset, read_attributes

from .augment import write_synthetic_manifest
from .augment_sources import (
    GATE_THRESHOLD,
    compose_reports,
    findings_reader,
    gate_synthetic,
    load_grey,
    sentence_pool,
    stating_sentences,
)
from .html_report import DemoPage, write_demo_report
from .roundtrip import RoundTrip
from .zoo import AUGMENT_FILE

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
    #: synthetic studies drawn (and gated) per rare finding
    augment_per_finding: int
    roundtrip_n: int = 32
    num_inference_steps: int = 20
    #: longest report (tokens) the report model writes; validation studies decoded during training
    max_length: int = 100
    val_samples: int = 50


QUICK = DemoSizes(patients=30, studies=2, size=32, backbone="radclip_tiny", backbone_steps=3,
                  report_model="baseline_tiny", report_steps=3, classifier="classifier_tiny", classifier_steps=3,
                  ldm="ldm_tiny", autoencoder_steps=3, unet_steps=4, batch_size=8, n_eval=8, edits=4,
                  augment_per_finding=3, roundtrip_n=4, num_inference_steps=3, max_length=40,
                  val_samples=8)
# --from-scratch: every model trained for seconds (8 minutes on a 2-core CPU when the augmentation stage still
# retrained decoders for 82 s of it; the per-stage times are printed and in results.json).
FULL = DemoSizes(patients=300, studies=3, size=64, backbone="radclip_small", backbone_steps=100,
                 report_model="baseline_small", report_steps=150, classifier="classifier_small", classifier_steps=100,
                 ldm="ldm_small", autoencoder_steps=100, unet_steps=120, batch_size=32, n_eval=100, edits=16,
                 augment_per_finding=8, roundtrip_n=24, num_inference_steps=20)


#: the zoo entries the demo starts from (``radloop zoo list``)
ZOO_MODELS = {"diffusion": "zoo:ldm64", "report": "zoo:uar", "judge": "zoo:judge64", "backbone": "zoo:radclip_small"}
# Fresh data from a seed no zoo training used.
ZOO = replace(FULL, patients=100)


def _train_cfg(out: Path, steps: int, lr: float, seed: int) -> TrainConfig:
    return TrainConfig(output_dir=str(out), max_steps=steps, learning_rate=lr, eval_every=steps,
                       checkpoint_every=steps, log_every=max(steps // 10, 1), warmup_steps=min(20, steps // 5),
                       seed=seed, checkpoints_total_limit=1)


class _Stages:
    """Runs the demo's named stages, announcing each and keeping its wall time."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.times: list[tuple[str, float]] = []

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        self.echo(f"[demo] {name} ...")
        start = time.perf_counter()
        value = fn()
        self.times.append((name, time.perf_counter() - start))
        return value


def _make_data(data: Path, sizes: DemoSizes, seed: int, quick: bool) -> Any:
    synth = SynthConfig(patients=sizes.patients, studies_per_patient=sizes.studies, size=sizes.size, seed=seed)
    if quick:  # enough positives of every finding in a tiny set
        synth.prevalence = {k: max(v, 0.15) for k, v in synth.prevalence.items()}
    return generate_dataset(data, synth, overwrite=True, progress=True)


def _train_models(out: Path, sizes: DemoSizes, annotation: str, seed: int, stage: _Stages) -> None:
    """Backbone, report decoder, judge and diffusion model, each under ``out/<name>``."""
    stage("backbone", lambda: train_backbone(BackboneExperiment(
        BackboneDataConfig(annotation=annotation, batch_size=max(sizes.batch_size, 16)),
        # with a findings head: the quality gate of the synthetic rare cases reads with it (as with zoo:radclip_small)
        BackboneModelConfig(name=sizes.backbone, findings_weight=1.0),
        _train_cfg(out / "backbone", sizes.backbone_steps, 5e-4, seed))))
    report_exp = ReportExperiment(
        ReportDataConfig(annotation=annotation, image_size=sizes.size, batch_size=sizes.batch_size,
                         val_samples=sizes.val_samples, max_length=sizes.max_length),
        ReportModelConfig(name=sizes.report_model), DecodingConfig(num_beams=1, max_length=sizes.max_length),
        _train_cfg(out / "report", sizes.report_steps, 5e-4, seed))
    stage("report model", lambda: train_report_model(report_exp))
    stage("classifier (judge)", lambda: train_classifier(ClassifierExperiment(
        ClassifierDataConfig(annotation=annotation, image_size=sizes.size, batch_size=sizes.batch_size * 2),
        ClassifierModelConfig(name=sizes.classifier),
        _train_cfg(out / "classifier", sizes.classifier_steps, 1e-3, seed))))
    stage("diffusion", lambda: train_diffusion(DiffusionExperiment(
        DiffusionDataConfig(annotation=annotation, batch_size=sizes.batch_size),
        DiffusionModelConfig(name=sizes.ldm, backbone=str(out / "backbone" / "best")),
        DiffusionLossConfig(filter_warmup=max(sizes.unet_steps // 3, 1)),
        AutoencoderTrainConfig(steps=sizes.autoencoder_steps, batch_size=sizes.batch_size),
        _train_cfg(out / "diffusion", sizes.unet_steps, 3e-4, seed))))


def _evaluate(backbone: str, trip: RoundTrip, judge: Judge, test: dict[str, Any], n: int) -> dict[str, Any]:
    """Both directions on the first ``n`` test studies: report metrics, the judge's mAUC, FID."""
    with torch.no_grad():
        gen_reports = trip.image_to_report(test["images"][:n])
        gen_images = trip.report_to_image(test["reports"][:n])
    refs = {test["ids"][i]: test["reports"][i] for i in range(n)}
    preds = {test["ids"][i]: gen_reports[i] for i in range(n)}
    labels = test["labels"][:n]
    auc_gen = multilabel_auroc(judge(gen_images).numpy(), labels, CHEXPERT_LABELS)
    auc_real = multilabel_auroc(judge(test["images"][:n]).numpy(), labels, CHEXPERT_LABELS)
    extractor = build_feature_extractor(f"backbone:{resolve_zoo(backbone)}")
    fid = fid_report(extract_features(extractor, test["images"]), extract_features(extractor, gen_images))
    return {"reports": evaluate_reports(preds, refs), "gen_reports": gen_reports, "gen_images": gen_images,
            "images": {"mauc_generated": auc_gen["mauc"], "mauc_real": auc_real["mauc"], **fid}}


def _counterfactuals(pipe: ReportToCXRPipeline, judge: Judge, data: Path, sizes: DemoSizes,
                     seed: int) -> dict[str, Any]:
    """Edits of test studies scored against SynthCXR's true counterfactuals (masked editing, at the pipeline's
    saved edit strength and guidance)."""
    edits = counterfactual_edits(data, "test", sizes.edits, seed)
    source = torch.stack([torch.from_numpy(e.source)[None] for e in edits])
    truth = torch.stack([torch.from_numpy(e.true_cf)[None] for e in edits])
    edited = pipe.counterfactual(source, [e.new_report for e in edits], [e.source_report for e in edits],
                                 num_inference_steps=max(sizes.num_inference_steps, 10), output_type="pt").images
    metrics = counterfactual_metrics(source, edited, truth, judge, [e.added for e in edits],
                                     [e.removed for e in edits])
    return {"edits": edits, "edited": edited, "metrics": {k: v for k, v in metrics.items() if k != "per_edit"}}


def _rarest_findings(data: Path, k: int) -> list[str]:
    """The ``k`` rarest pathologies among the training studies (present at least once)."""
    counts = {name: 0 for name in PATHOLOGY_LABELS}
    for rec in read_attributes(data):
        if rec["split"] == "train":
            for f in rec["findings"]:
                if f["name"] in counts:  # Support Devices is not a pathology
                    counts[f["name"]] += 1
    return [name for name, v in sorted(counts.items(), key=lambda kv: (kv[1], kv[0])) if v > 0][:k]


def _synthetic_rare(out: Path, pipe: ReportToCXRPipeline, data: Path, backbone: str, sizes: DemoSizes,
                    seed: int, guidance: float | None = None) -> dict[str, Any]:
    """Synthetic studies of the two rarest training findings, each read by the quality gate.

    Reports are composed from training sentences (one stating the finding, the rest normal), drawn with the
    pipeline's saved sampler, and read by the gate's independent reader: the backbone's findings head, never
    the judge. No decoder is retrained here; the augmentation answer itself is the zoo's precomputed one.

    Returns ``rare_findings``, the gate's ``reader``, ``threshold`` and per-finding ``findings`` rates, and
    ``studies`` (finding, report, probability, accepted) with their ``images`` (N, 1, S, S) in [0, 1].
    """
    train = [r["report"] for r in load_records(data / "annotation.json") if r["split"] == "train"]
    pool = sentence_pool(train)
    # the rarest findings some training sentence states (a report can only be composed for those)
    rare = [f for f in _rarest_findings(data, len(PATHOLOGY_LABELS)) if stating_sentences(pool, f)][:2]
    reports = {f: compose_reports(pool, f, sizes.augment_per_finding, seed) for f in rare}
    manifest = write_synthetic_manifest(pipe, reports, out / "synthetic", sizes.num_inference_steps, guidance, seed)
    gate = gate_synthetic(manifest, findings_reader(resolve_zoo(backbone)), GATE_THRESHOLD, int(pipe.image_size))
    rows = load_records(manifest)
    studies = [{"finding": r["target_finding"], "report": r["report"], "probability": d["probability"],
                "accepted": d["accepted"]} for r, d in zip(rows, gate.studies, strict=True)]
    images = torch.stack([load_grey(manifest.parent / r["image_path"][0], int(pipe.image_size)) for r in rows])
    return {"rare_findings": rare, "reader": backbone, "threshold": GATE_THRESHOLD, "findings": gate.findings,
            "studies": studies, "images": images}


def _numbers(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float))}


def _history(run: Path) -> list[dict[str, float]]:
    path = run / "history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def run_demo(out: str | Path, quick: bool = False, seed: int = 0, from_scratch: bool = False,
             echo: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Run every stage; write ``report.html`` and ``results.json`` under ``out``; return the results.

    Starts from the zoo (:data:`ZOO_MODELS`) unless ``from_scratch`` or ``quick`` (tiny models trained
    for seconds, for the tests)."""
    use_zoo = not (quick or from_scratch)
    sizes = QUICK if quick else ZOO if use_zoo else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    annotation = str(data / "annotation.json")
    stage = _Stages(echo)

    # 1. data (for the zoo: a seed no zoo training used); 2-5. models, from the zoo or trained now
    if use_zoo:
        missing = [name for name in ZOO_MODELS.values() if not _in_zoo(name)]
        if missing:
            raise FileNotFoundError(f"the demo starts from the zoo, which lacks {', '.join(missing)}: "
                                    "`radloop zoo train NAME` each, or run `radloop demo --from-scratch`")
    stage("SynthCXR data", lambda: _make_data(data, sizes, seed + (2027 if use_zoo else 0), quick))
    paths = _models(out, annotation, sizes, seed, stage, use_zoo)
    pipe = ReportToCXRPipeline.from_pretrained(paths["diffusion"])
    pipe.set_progress_bar_config(disable=True)
    generator = ReportGenerator.from_pretrained(paths["report"],
                                                DecodingConfig(num_beams=1, max_length=sizes.max_length))
    judge = Judge.from_pretrained(paths["judge"])
    # guidance: the pipeline's saved default (the zoo model's was chosen on validation reports)
    trip = RoundTrip(pipe, generator, sizes.num_inference_steps, None, seed)
    test = load_image_set(annotation, "test", sizes.size, "file")
    n = min(sizes.n_eval, len(test["reports"]))

    # 6. both directions; 7. counterfactuals; 8. synthetic cases of the two rarest findings through the quality
    # gate; 9. round trip
    ev = stage("evaluation", lambda: _evaluate(paths["backbone"], trip, judge, test, n))
    # edit strength and guidance: the pipeline's saved defaults (the zoo model's chosen on validation edits)
    cf = stage("counterfactuals", lambda: _counterfactuals(pipe, judge, data, sizes, seed))
    aug = stage("synthetic rare cases", lambda: _synthetic_rare(out, pipe, data, paths["backbone"], sizes, seed,
                                                                trip.guidance_scale))
    k = min(sizes.roundtrip_n, n)
    rt_reports, rt_images = stage("round trip", lambda: trip.both(test["reports"][:k], test["images"][:k]))

    # 10. the numbers and the HTML report
    results = _results("quick" if quick else "zoo" if use_zoo else "from scratch", seed, paths, ev, cf, aug,
                       rt_reports, rt_images)
    origin = ("models from the zoo (" + ", ".join(paths.values()) + "), trained once to convergence"
              if use_zoo else "every model trained for seconds in this run")
    intro = (f"RadLoop demo on SynthCXR ({results['mode']} mode, seed {seed}): {sizes.patients} fresh patients, "
             f"{sizes.size} px, CPU; {origin}. Every number below was measured in this run (except the "
             "augmentation benchmark's, marked precomputed); results.json holds them all.")
    # the models trained in this run (none in zoo mode: the zoo's cards have their curves)
    names = () if use_zoo else ("backbone", "report", "classifier", "diffusion")
    histories = {name: _history(out / name) for name in names}
    page = DemoPage(test, n, ev, cf, aug, {"reports": rt_reports, "images": rt_images}, stage.times, histories,
                    results, intro)
    stage("HTML report", lambda: write_demo_report(out, page))
    results["stage_seconds"] = {name: round(sec, 1) for name, sec in stage.times}
    results["total_seconds"] = round(sum(sec for _, sec in stage.times), 1)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=float) + "\n")
    return results


def _models(out: Path, annotation: str, sizes: DemoSizes, seed: int, stage: _Stages, use_zoo: bool
            ) -> dict[str, str]:
    """The model folders: the zoo's, or trained now."""
    if use_zoo:
        return dict(ZOO_MODELS)
    _train_models(out, sizes, annotation, seed, stage)
    return {"diffusion": str(out / "diffusion" / "best"), "report": str(out / "report" / "best"),
            "judge": str(out / "classifier" / "best"), "backbone": str(out / "backbone" / "best")}


def _results(mode: str, seed: int, paths: dict[str, str], ev: dict[str, Any], cf: dict[str, Any],
             aug: dict[str, Any], rt_reports: dict[str, Any], rt_images: dict[str, Any]) -> dict[str, Any]:
    """Every number of the run for ``results.json`` (and the page), with the zoo's precomputed augmentation
    answer (shipped beside the zoo entries) in zoo mode."""
    results: dict[str, Any] = {
        "mode": mode, "seed": seed, "models": paths,
        "report_metrics": _numbers(ev["reports"]), "image_metrics": ev["images"],
        "counterfactual_metrics": cf["metrics"],
        "synthetic_rare": {k: aug[k] for k in ("rare_findings", "reader", "threshold", "findings")},
        "roundtrip": {"report": _numbers(rt_reports), "image": _numbers(rt_images),
                      "per_finding": rt_reports["per_finding"]},
    }
    answer = zoo_root() / "synthcxr64" / AUGMENT_FILE
    if mode == "zoo" and answer.is_file():
        results["augmentation_precomputed"] = {k: v for k, v in json.loads(answer.read_text()).items()
                                               if k not in ("runs", "examples")}
    return results


def _in_zoo(name: str) -> bool:
    try:
        resolve_zoo(name)
    except (FileNotFoundError, ValueError):
        return False
    return True
