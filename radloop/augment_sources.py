"""Two augmentation sources beside synthesis from scratch, for ``radloop augment``.

* **The quality gate** keeps a synthetic image only when an *independent* reader sees the finding its report
  was written for: the findings head of a RadCLIP backbone or of a pre-trained tower (:func:`findings_reader`),
  never the judge that scores the results. It writes the kept studies as a manifest and the acceptance rate of
  each finding.
* **Counterfactual augmentation** adds a rare finding to *real* training images by masked editing (the
  pipeline's :meth:`~report2image.ReportToCXRPipeline.counterfactual`, DiffEdit mask): the patient's anatomy is
  kept, and the edited report (:func:`add_finding`) is the label.

Reports for synthesis from scratch are composed here too (:func:`compose_reports`: a sentence stating the finding
among sentences of normal reports, all from the training reports).

Both write ``synthetic: true`` training rows in the suite's JSONL manifest format, with ``target_finding``, and
reuse what an earlier run with the same request wrote.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from shared.data.dataset import load_records, to_grey
from shared.io import atomic_save_image, atomic_write_text
from shared.labels import CHEXPERT_LABELS, PATHOLOGY_LABELS
from shared.metrics.clinical import binarize
from shared.metrics.report_quality import contradicted, said_values
from shared.text.labeler import ReportLabeler

__all__ = ["GATE_FILE", "GATE_THRESHOLD", "GateOutput", "load_grey", "findings_reader", "gate_synthetic",
           "gate_on_real", "add_finding", "write_counterfactual_manifest", "pick_rare_findings", "sentence_pool",
           "stating_sentences", "compose_reports"]

logger = logging.getLogger(__name__)

#: sentences that call the whole study normal: they go when a finding is added
_GLOBAL_NORMAL = re.compile(r"\b(no acute|no active|normal (chest|study|exam)|unremarkable (chest|study|exam))\b", re.I)

Reader = Callable[[torch.Tensor], np.ndarray]
#: the gate's decisions, beside the synthetic manifest
GATE_FILE = "gate.json"
#: the reader's probability of the intended finding at which the gate keeps a synthetic image
GATE_THRESHOLD = 0.5


@dataclass
class GateOutput:
    """What :func:`gate_synthetic` decided (also written to :data:`GATE_FILE`).

    Attributes:
        manifest: the gated manifest (``<manifest stem>_gated.jsonl``, the kept rows in order).
        findings: ``{finding: {"generated", "accepted", "rate", "mean_probability"}}``.
        studies: one ``{"id", "finding", "probability", "accepted"}`` per synthetic study, in manifest order.
    """

    manifest: Path
    findings: dict[str, dict[str, float]]
    studies: list[dict[str, Any]]


def reusable(manifest: Path, request: dict[str, Any]) -> bool:
    """Whether ``manifest`` was written for ``request`` (the ``request.json`` beside it) and every image it names
    is on disk: then a rerun keeps it instead of generating again."""
    stamp = manifest.parent / "request.json"
    if not (manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == request):
        return False
    return all((manifest.parent / p).is_file() for r in load_records(manifest) for p in r["image_path"])


def stamp_request(manifest: Path, rows: list[dict[str, Any]], request: dict[str, Any]) -> Path:
    """Write ``rows`` as ``manifest`` and, after it, the ``request.json`` that :func:`reusable` checks."""
    atomic_write_text(manifest, "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(manifest.parent / "request.json", json.dumps(request) + "\n")
    return manifest

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


def stating_sentences(pool: tuple[list[str], np.ndarray], finding: str) -> list[str]:
    """The sentences of a :func:`sentence_pool` that state ``finding`` and no other finding (up to hierarchy
    parents)."""
    sentences, labels = pool
    j = CHEXPERT_LABELS.index(finding)
    pos = binarize(labels)
    others = [i for i, name in enumerate(CHEXPERT_LABELS) if name != finding and name not in _PARENTS]
    return [s for s, row, lab in zip(sentences, pos, labels, strict=True)
            if row[j] and not row[others].any() and lab[j] == 1]


def compose_reports(pool: tuple[list[str], np.ndarray], finding: str, k: int, seed: int = 0) -> list[str]:
    """``k`` reports stating ``finding`` and nothing else abnormal, from a :func:`sentence_pool`:
    one sentence stating the finding (its only positive, up to hierarchy parents) and up to three
    sentences that state no finding and do not mention this one.

    Raises ValueError when no training sentence states the finding.
    """
    sentences, labels = pool
    j = CHEXPERT_LABELS.index(finding)
    pos = binarize(labels)
    stating = stating_sentences(pool, finding)
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


def findings_reader(reader: str | os.PathLike[str]) -> Reader:
    """``reader(images) -> (N, 14)`` probabilities of each finding for [0, 1] images (N, 1, S, S): the gate's
    reader, trained on the real images' reports, never the judge. ``reader``: a RadCLIP folder (its findings
    head) or a tower pre-trainer's (``radloop train tower``: its findings head, images resized to its own side,
    e.g. zoo:tower128 for 128 px images, where radclip_small reads a 64 px copy).

    Raises:
        ValueError: a judge's folder, or a backbone without findings head (``model.findings_weight`` 0).
    """
    from shared.backbone import RadCLIP
    from shared.backbone.classifier import TowerPretrainer
    from shared.modeling import saved_class

    # the judge is named only to be refused: the gate must not read with the model that scores the results
    folder, kind = saved_class(reader, {"RadCLIP": RadCLIP, "TowerPretrainer": TowerPretrainer,
                                        "CXRClassifier": None}, "a RadCLIP or TowerPretrainer (findings head)")
    if kind is None:
        raise ValueError(f"{folder} holds the judge classifier, which never gates: it scores the results")
    if kind is TowerPretrainer:
        return _tower_reader(folder, TowerPretrainer.from_pretrained(folder).eval())
    model = RadCLIP.from_pretrained(folder).eval()
    if model.label_head is None:
        raise ValueError(f"{reader} has no findings head (trained with model.findings_weight=0): it cannot gate")
    from report2image.pipeline import backbone_image_embeds

    @torch.no_grad()
    def read(images: torch.Tensor) -> np.ndarray:
        out = [torch.sigmoid(model.label_logits(backbone_image_embeds(model, batch * 2 - 1)))
               for batch in images.split(64)]
        return torch.cat(out).numpy()

    return read


def _tower_reader(folder: Path, model: Any) -> Reader:
    from shared.data.transforms import PREPROCESS_FILE, PreprocessConfig
    from shared.saved_settings import load_settings

    # the pixels it was trained and selected on, as saved with it (the judge reads its own the same way)
    preprocess = load_settings(folder, PREPROCESS_FILE, PreprocessConfig, image_size=model.config.image_size)

    @torch.no_grad()
    def read(images: torch.Tensor) -> np.ndarray:
        return torch.cat([torch.sigmoid(model(preprocess.apply(b)).logits) for b in images.split(64)]).numpy()

    return read


def load_grey(path: str | os.PathLike[str], size: int) -> torch.Tensor:
    """One image as a [0, 1] tensor (1, size, size)."""
    with Image.open(path) as im:
        grey = to_grey(im).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0)[None]


def gate_synthetic(synthetic: str | os.PathLike[str], reader: Reader, threshold: float = GATE_THRESHOLD,
                   image_size: int = 224) -> GateOutput:
    """Keep the synthetic studies of ``synthetic`` (a manifest with ``target_finding``) whose image the reader
    reads as showing that finding with probability >= ``threshold``.

    Writes ``<stem>_gated.jsonl`` (the kept rows, in order; ``synthetic_gated.jsonl`` for ``synthetic.jsonl``,
    ``counterfactual_gated.jsonl`` for the edits) and ``gate.json`` beside the manifest (the
    threshold, the rates, and each study's probability and decision under ``studies``).

    Returns:
        the gated manifest, the per-finding rates and each study's decision (:class:`GateOutput`).
    """
    synthetic = Path(synthetic)
    rows = load_records(synthetic)
    probs = _read_first_views(reader, rows, synthetic.parent, image_size)
    # the reader's probability of each study's own intended finding
    target = np.array([probs[i, CHEXPERT_LABELS.index(r["target_finding"])] for i, r in enumerate(rows)])
    accepted = target >= threshold
    rates = {}
    for finding in dict.fromkeys(r["target_finding"] for r in rows):
        idx = [i for i, r in enumerate(rows) if r["target_finding"] == finding]
        n_ok = int(accepted[idx].sum())
        rates[finding] = {"generated": len(idx), "accepted": n_ok, "rate": round(n_ok / len(idx), 4),
                          "mean_probability": round(float(target[idx].mean()), 4)}
        logger.info("gate: %s %d of %d accepted", finding, n_ok, len(idx))
    studies = [{"id": r["id"], "finding": r["target_finding"], "probability": round(float(p), 4), "accepted": bool(ok)}
               for r, p, ok in zip(rows, target, accepted, strict=True)]
    out = synthetic.with_name(f"{synthetic.stem}_gated.jsonl")
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r, ok in zip(rows, accepted, strict=True) if ok))
    atomic_write_text(synthetic.parent / GATE_FILE,
                      json.dumps({"threshold": threshold, "findings": rates, "studies": studies}) + "\n")
    return GateOutput(out, rates, studies)


def gate_on_real(reader: Reader, annotation: str | os.PathLike[str], findings: Sequence[str],
                 threshold: float = GATE_THRESHOLD, image_size: int = 224, split: str = "test", per_kind: int = 200,
                 labeler: ReportLabeler | None = None, seed: int = 0) -> dict[str, dict[str, Any]]:
    """The gate's reference: the share of *real* studies the reader keeps at the same threshold, per finding.

    An acceptance rate of synthetic images means little alone: a reader trained at a finding's natural
    prevalence may keep few real cases at 0.5 too, and a reader blind to a finding keeps none. So for each
    finding the reader reads up to ``per_kind`` real studies of ``annotation``'s ``split`` whose report states it
    (``kept_positives``: the rate a synthetic image drawn as clearly as a real case would reach) and as many
    whose report does not (``kept_negatives``: what it keeps by mistake). Labels are the labeler's readings of
    the reports, as the decoders' are; studies are drawn with a fixed seed.

    Returns:
        ``{finding: {"positives", "kept_positives", "negatives", "kept_negatives"}}``; a rate is None where the
        split has no such study.
    """
    annotation = Path(annotation)
    rows = [r for r in load_records(annotation) if r.get("split") == split]
    if not rows:
        raise ValueError(f"{annotation} has no '{split}' studies for the gate's reference")
    positive = binarize((labeler or ReportLabeler()).label_batch([r["report"] for r in rows]))
    rng = np.random.default_rng(seed)
    picks: dict[tuple[str, str], np.ndarray] = {}
    for finding in findings:
        j = CHEXPERT_LABELS.index(finding)
        for kind, where in (("positives", positive[:, j]), ("negatives", ~positive[:, j])):
            idx = np.flatnonzero(where)
            picks[finding, kind] = np.sort(rng.choice(idx, per_kind, replace=False)) if len(idx) > per_kind else idx
    # each drawn study is read once, however many findings drew it (the negatives overlap most)
    read = sorted({int(i) for idx in picks.values() for i in idx})
    probs = _read_first_views(reader, [rows[i] for i in read], annotation.parent, image_size)
    row_of = {i: k for k, i in enumerate(read)}
    out: dict[str, dict[str, Any]] = {}
    for finding in findings:
        j = CHEXPERT_LABELS.index(finding)
        kinds = {}
        for kind in ("positives", "negatives"):
            p = np.array([probs[row_of[int(i)], j] for i in picks[finding, kind]])
            kinds[kind] = len(p)
            kinds[f"kept_{kind}"] = round(float((p >= threshold).mean()), 4) if len(p) else None
        out[finding] = kinds
        logger.info("gate reference: %s kept %s of %d real positives, %s of %d negatives", finding,
                    kinds["kept_positives"], kinds["positives"], kinds["kept_negatives"], kinds["negatives"])
    return out


def _read_first_views(reader: Reader, rows: Sequence[dict[str, Any]], root: Path, image_size: int) -> np.ndarray:
    """The reader's probabilities (N, 14) of each study's first image (its path under ``root``)."""
    if not rows:
        return np.zeros((0, len(CHEXPERT_LABELS)))
    return reader(torch.stack([load_grey(root / r["image_path"][0], image_size) for r in rows]))


def add_finding(report: str, sentence: str, labeler: ReportLabeler) -> str:
    """``report`` with ``sentence`` (stating a finding) added: its sentences that contradict the new one (a
    negation of the finding, "the lungs are clear" against an opacity) or call the study normal are dropped."""
    said = said_values([reading for _, reading in labeler.sentence_readings(sentence)])
    kept = []
    for text in _sentences(report):
        readings = labeler.sentence_readings(text)
        if _GLOBAL_NORMAL.search(text) or any(contradicted(said, r) for _, r in readings):
            continue
        kept.append(text)
    return " ".join([*kept, sentence]).strip()


def write_counterfactual_manifest(pipe: Any, sources: Sequence[dict[str, Any]], root: Path,
                                  sentences_by_finding: dict[str, list[str]], per_finding: int,
                                  out_dir: str | os.PathLike[str], labeler: ReportLabeler, seed: int = 0,
                                  batch_size: int = 16) -> Path:
    """Add each rare finding to ``per_finding`` real training studies that do not state it, by masked editing.

    Args:
        pipe: a :class:`~report2image.ReportToCXRPipeline` (its saved edit strength, guidance and steps).
        sources: real training records (``id``, ``patient_id``, ``report``, ``image_path``); paths under ``root``.
        sentences_by_finding: sentences stating each finding (e.g. from the training reports), one is drawn per edit.

    Writes ``images/*.png`` and ``counterfactual.jsonl`` (split train, ``synthetic`` and ``counterfactual`` true,
    ``source_id``, ``target_finding``); a rerun with the same request keeps them.
    """
    out = Path(out_dir)
    path = out / "counterfactual.jsonl"
    rng = np.random.default_rng(seed)
    plan = []
    labels = labeler.label_batch([s["report"] for s in sources])
    for finding, sentences in sentences_by_finding.items():
        j = CHEXPERT_LABELS.index(finding)
        free = [r for r, lab in zip(sources, labels, strict=True) if lab[j] != 1]
        if not free or not sentences:
            raise ValueError(f"counterfactual augmentation: no training study without '{finding}' or no sentence "
                             "stating it")
        for k, i in enumerate(rng.choice(len(free), size=per_finding, replace=len(free) < per_finding)):
            src = free[int(i)]
            new = add_finding(src["report"], sentences[int(rng.integers(len(sentences)))], labeler)
            plan.append((finding, k, src, new))
    request = {"sources": [p[2]["id"] for p in plan], "reports": [p[3] for p in plan], "seed": seed,
               "sampling": getattr(getattr(pipe, "sampling", None), "__dict__", None)}
    if reusable(path, request):
        logger.info("counterfactual augmentation: reusing the %d edits in %s", len(plan), out)
        return path
    (out / "images").mkdir(parents=True, exist_ok=True)
    size = int(pipe.image_size)
    rows = []
    for start in range(0, len(plan), batch_size):
        chunk = plan[start:start + batch_size]
        images = torch.stack([load_grey(root / src["image_path"][0], size) for _, _, src, _ in chunk])
        edited = pipe.counterfactual(images, [p[3] for p in chunk], [p[2]["report"] for p in chunk],
                                     output_type="pil").images
        for (finding, k, src, new), image in zip(chunk, edited, strict=True):
            slug = re.sub(r"\W+", "_", finding.lower())
            sid = f"cf_{slug}_{k:04d}"
            atomic_save_image(image, out / "images" / f"{sid}.png")
            rows.append({"id": sid, "patient_id": src.get("patient_id", ""), "report": new,
                         "image_path": [f"images/{sid}.png"], "split": "train", "synthetic": True,
                         "counterfactual": True, "source_id": src["id"], "target_finding": finding})
    return stamp_request(path, rows, request)
