"""Write a SynthCXR dataset to disk, and draw a contact sheet of what the phantoms look like.

Layout of ``out_dir``::

    images/<patient_id>/<study_id>_<view>.png   8-bit grayscale
    annotation.json     R2Gen layout {"train": [...], "val": [...], "test": [...]}, patient-disjoint
    labels.csv          id, split and the CheXpert-14 image (ground-truth) labels, 0/1
    attributes.jsonl    one study a line: findings with attributes, report labels, patient,
                        acquisition, degradation and wrong-report flags
    synthcxr.json       the generator config and counts

Everything is a pure function of the config: the same seed writes the same bytes, whatever
the number of worker processes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing as mp
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shared.io import atomic_write_bytes, atomic_write_text
from shared.labels import CHEXPERT_LABELS, image_labels

from .renderer import render
from .reports import write_report
from .world import (
    DEFAULT_PREVALENCE,
    FINDING_SPECS,
    Acquisition,
    Finding,
    Patient,
    sample_acquisition,
    sample_findings,
    sample_patient,
    stable_seed,
)

logger = logging.getLogger(__name__)

__all__ = ["SynthConfig", "generate_dataset", "degrade", "DEGRADATIONS", "contact_sheet", "patient_for", "to_png"]

DEGRADATIONS = ("noise", "blur", "low_contrast", "low_resolution")
FORMAT_VERSION = 1


@dataclass
class SynthConfig:
    """How to generate a SynthCXR dataset (the ``synth`` section of a config)."""

    patients: int = 200
    studies_per_patient: int = 3
    size: int = 128
    views: int = 1
    seed: int = 0
    prevalence: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PREVALENCE))
    max_findings: int = 4
    hedge_prob: float = 0.1
    degraded_fraction: float = 0.1
    wrong_report_fraction: float = 0.05
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    pose_jitter: float = 1.0
    workers: int = 0

    def validate(self) -> None:
        if self.patients < 1 or self.studies_per_patient < 1:
            raise ValueError("patients and studies_per_patient must be >= 1, "
                             f"got {self.patients}, {self.studies_per_patient}")
        if self.views not in (1, 2):
            raise ValueError(f"views must be 1 (frontal) or 2 (frontal + lateral), got {self.views}")
        if self.size < 16:
            raise ValueError(f"size must be at least 16, got {self.size}")
        for name in ("hedge_prob", "degraded_fraction", "wrong_report_fraction", "val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be < 1")
        unknown = set(self.prevalence).difference(FINDING_SPECS)
        if unknown:
            raise ValueError(f"unknown finding(s) in prevalence: {sorted(unknown)}")


def patient_for(cfg: SynthConfig, index: int) -> Patient:
    """The patient with this index in the dataset generated from ``cfg``."""
    return sample_patient(f"P{index:05d}", stable_seed(cfg.seed, "patient", index))


def degrade(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Apply one acquisition degradation to a [0, 1] float image of shape (H, W)."""
    from scipy.ndimage import gaussian_filter

    if kind == "noise":
        out = img + rng.uniform(0.05, 0.1) * rng.standard_normal(img.shape)
    elif kind == "blur":
        out = gaussian_filter(img, sigma=rng.uniform(1.0, 2.0) * img.shape[0] / 128)
    elif kind == "low_contrast":
        out = img.mean() + (img - img.mean()) * rng.uniform(0.3, 0.5)
    elif kind == "low_resolution":
        factor = int(rng.choice([3, 4]))
        small = Image.fromarray(img.astype(np.float32), mode="F").resize(
            (max(1, img.shape[1] // factor), max(1, img.shape[0] // factor)), Image.BILINEAR
        )
        out = np.asarray(small.resize(img.shape[::-1], Image.NEAREST), dtype=np.float32)
    else:
        raise ValueError(f"unknown degradation {kind!r}; expected one of {DEGRADATIONS}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def to_png(img: np.ndarray) -> bytes:
    """8-bit greyscale PNG bytes of an image (H, W) in [0, 1]: the one encoder of every SynthCXR file on disk."""
    buf = io.BytesIO()
    Image.fromarray(np.round(img * 255.0).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _views(cfg: SynthConfig) -> tuple[str, ...]:
    return ("frontal", "lateral")[: cfg.views]


def _patient_studies(args: tuple[SynthConfig, int, str, str]) -> list[dict[str, Any]]:
    """Render and write every study of one patient; returns one record per study."""
    cfg, index, split, out_dir = args
    patient = patient_for(cfg, index)
    folder = Path(out_dir) / "images" / patient.patient_id
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for s in range(cfg.studies_per_patient):
        study_id = f"{patient.patient_id}_S{s}"
        rng = np.random.default_rng(stable_seed(cfg.seed, "study", index, s))
        findings = sample_findings(rng, cfg.prevalence, cfg.max_findings)
        acq = sample_acquisition(int(rng.integers(0, 2**62)), cfg.pose_jitter)
        report = write_report(findings, np.random.default_rng(int(rng.integers(0, 2**62))), cfg.hedge_prob)
        degradation = str(rng.choice(DEGRADATIONS)) if rng.random() < cfg.degraded_fraction else None
        deg_seed = int(rng.integers(0, 2**62))
        paths = []
        for view in _views(cfg):
            img = render(patient, findings, acq, cfg.size, view)
            if degradation:
                img = degrade(img, degradation, np.random.default_rng([deg_seed, len(paths)]))
            rel = f"images/{patient.patient_id}/{study_id}_{view}.png"
            # temp file + rename: a killed run never leaves a truncated PNG under a final name
            atomic_write_bytes(Path(out_dir) / rel, to_png(img))
            paths.append(rel)
        records.append({
            "id": study_id,
            "patient_id": patient.patient_id,
            "split": split,
            "image_path": paths,
            "views": list(_views(cfg)),
            "findings": [f.to_dict() for f in findings],
            "image_labels": image_labels(f.name for f in findings),
            "report": report.text,
            "report_findings": report.findings,
            "report_impression": report.impression,
            "report_labels": report.labels,
            "degradation": degradation,
            "acquisition": acq.to_dict(),
            "patient": patient.to_dict(),
        })
    return records


def _assign_splits(cfg: SynthConfig) -> list[str]:
    rng = np.random.default_rng(stable_seed(cfg.seed, "splits"))
    order = rng.permutation(cfg.patients)
    n_test = int(round(cfg.test_fraction * cfg.patients))
    n_val = int(round(cfg.val_fraction * cfg.patients))
    splits = ["train"] * cfg.patients
    for rank, index in enumerate(order):
        if rank < n_test:
            splits[index] = "test"
        elif rank < n_test + n_val:
            splits[index] = "val"
    return splits


def _swap_reports(records: list[dict[str, Any]], cfg: SynthConfig) -> None:
    """Give a fraction of studies the report of another study (same split, other labels)."""
    rng = np.random.default_rng(stable_seed(cfg.seed, "wrong-reports"))
    originals = [(r["report"], r["report_findings"], r["report_impression"], r["report_labels"]) for r in records]
    by_split: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_split.setdefault(r["split"], []).append(i)
        r["wrong_report"], r["report_source_id"] = False, r["id"]
    for r in records:
        if rng.random() >= cfg.wrong_report_fraction:
            continue
        pool = by_split[r["split"]]
        for _ in range(20):
            j = pool[int(rng.integers(len(pool)))]
            if records[j]["image_labels"] != r["image_labels"]:
                break
        else:
            continue
        r["report"], r["report_findings"], r["report_impression"], r["report_labels"] = originals[j]
        r["wrong_report"], r["report_source_id"] = True, records[j]["id"]


def _iter_patients(cfg: SynthConfig, out_dir: Path, splits: Sequence[str]) -> Iterator[list[dict[str, Any]]]:
    jobs = [(cfg, i, splits[i], str(out_dir)) for i in range(cfg.patients)]
    workers = cfg.workers or min(2, os.cpu_count() or 1)
    if workers <= 1 or cfg.patients < 8:
        yield from map(_patient_studies, jobs)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_patient_studies, jobs, chunksize=max(1, min(32, cfg.patients // (8 * workers))))


def _json_labels(labels: Mapping[str, float]) -> dict[str, float | None]:
    return {k: (None if v != v else v) for k, v in labels.items()}


#: written first: what an interrupted generation was asked for (a rerun with the same request resumes it)
REQUEST_NAME = ".synthcxr_request.json"


def _prepare_output(out_dir: Path, overwrite: bool, cfg: SynthConfig) -> bool:
    """Make ``out_dir`` ready; True when it already holds this exact generation, complete."""
    request = json.dumps(asdict(cfg), sort_keys=True)
    # a run lock (``.radloop.lock``, taken by the CLI) alone does not make the folder non-empty
    if out_dir.exists() and any(p.name != ".radloop.lock" for p in out_dir.iterdir()):
        stamp = out_dir / REQUEST_NAME
        if (not overwrite and stamp.is_file() and stamp.read_text() == request
                and (out_dir / "annotation.json").exists() and (out_dir / "synthcxr.json").exists()):
            return True  # the same generation, already complete (killed after its last file): nothing to do
        interrupted = not (out_dir / "annotation.json").exists() and stamp.is_file()
        if interrupted and stamp.read_text() == request and not overwrite:
            # the same generation, killed before its annotation.json (written last): run it again over the
            # same folder; rendering is deterministic, so every image comes out the same
            logger.info("resuming the interrupted SynthCXR generation in %s", out_dir)
            for tmp in out_dir.rglob(".*.png.*"):  # temp files of images being written when it was killed
                tmp.unlink()
            return False
        if not overwrite:
            raise FileExistsError(f"output folder {out_dir} is not empty; pass overwrite to replace it"
                                  + (" (it holds an interrupted generation with other settings)" if interrupted
                                     else ""))
        for name in ("images", "annotation.json", "labels.csv", "attributes.jsonl", "synthcxr.json"):
            target = out_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / REQUEST_NAME, request)
    return False


def _annotation(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """R2Gen's ``annotation.json``: the studies of each split with their reports and image paths."""
    annotation: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    for r in records:
        annotation[r["split"]].append({
            "id": r["id"], "study_id": r["id"], "patient_id": r["patient_id"], "report": r["report"],
            "findings": r["report_findings"], "impression": r["report_impression"],
            "image_path": r["image_path"], "views": r["views"], "split": r["split"],
        })
    return annotation


def _labels_csv(records: list[dict[str, Any]]) -> str:
    """``labels.csv``: the image's true CheXpert labels of every study."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "split", *CHEXPERT_LABELS])
    for r in records:
        writer.writerow([r["id"], r["split"], *(r["image_labels"][n] for n in CHEXPERT_LABELS)])
    return buf.getvalue()


def _attributes_jsonl(records: list[dict[str, Any]]) -> str:
    """``attributes.jsonl``: everything the world knows of a study (findings, patient, acquisition)."""
    lines = []
    for r in records:
        keep = {k: r[k] for k in ("id", "patient_id", "split", "findings", "image_labels", "degradation",
                                  "wrong_report", "report_source_id", "acquisition", "patient")}
        keep["report_labels"] = _json_labels(r["report_labels"])
        lines.append(json.dumps(keep, sort_keys=True))
    return "\n".join(lines) + "\n"


def generate_dataset(
    out_dir: str | os.PathLike[str], cfg: SynthConfig | None = None, overwrite: bool = False, progress: bool = False
) -> dict[str, Any]:
    """Generate a SynthCXR dataset into ``out_dir`` and return a summary.

    Raises:
        FileExistsError: ``out_dir`` already holds files and ``overwrite`` is false; nothing is touched
            (unless they are an interrupted generation of the same ``cfg``, which is then resumed).
    """
    from tqdm.auto import tqdm

    cfg = cfg or SynthConfig()
    cfg.validate()
    out_dir = Path(out_dir)
    if _prepare_output(out_dir, overwrite, cfg):
        logger.info("%s already holds this SynthCXR generation, complete: nothing to do", out_dir)
        return json.loads((out_dir / "synthcxr.json").read_text())
    # 1. render the studies patient by patient (images are written as they come)
    splits = _assign_splits(cfg)
    records: list[dict[str, Any]] = []
    bar = tqdm(total=cfg.patients * cfg.studies_per_patient, desc="synthcxr", unit="study", disable=not progress)
    for batch in _iter_patients(cfg, out_dir, splits):
        records.extend(batch)
        bar.update(len(batch))
    bar.close()
    # 2. the flagged fraction of wrong reports
    _swap_reports(records, cfg)
    # 3. the files beside the images
    annotation = _annotation(records)
    summary = {
        "format_version": FORMAT_VERSION,
        "config": asdict(cfg),
        "studies": len(records),
        "splits": {k: len(v) for k, v in annotation.items()},
        "label_counts": {name: int(sum(r["image_labels"][name] for r in records)) for name in CHEXPERT_LABELS},
        "degraded": sum(r["degradation"] is not None for r in records),
        "wrong_reports": sum(r["wrong_report"] for r in records),
    }
    atomic_write_text(out_dir / "labels.csv", _labels_csv(records))
    atomic_write_text(out_dir / "attributes.jsonl", _attributes_jsonl(records))
    atomic_write_text(out_dir / "synthcxr.json", json.dumps(summary, indent=2) + "\n")
    # The annotation goes last: its presence marks a complete dataset.
    atomic_write_text(out_dir / "annotation.json", json.dumps(annotation, indent=1) + "\n")
    logger.info("wrote %d SynthCXR studies to %s", len(records), out_dir)
    return summary


def contact_sheet(
    path: str | os.PathLike[str], size: int = 128, seed: int = 0, per_row: int = 4, view: str = "frontal"
) -> Path:
    """Save a PNG grid: one row per finding (plus normal), columns are patients at rising severity."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows: list[tuple[str, list[tuple[Finding, ...]]]] = [("Normal", [()] * per_row)]
    for name, spec in FINDING_SPECS.items():
        cells = []
        for k in range(per_row):
            pick = lambda options, k=k: options[k % len(options)] if options else None  # noqa: E731
            levels = spec.severities
            sev = levels[min(k * len(levels) // per_row, len(levels) - 1)] if levels else None
            cells.append((Finding(name, sev, pick(spec.lateralities), pick(spec.zones), pick(spec.kinds), seed=k),))
        rows.append((name, cells))
    fig, axes = plt.subplots(len(rows), per_row, figsize=(per_row * 1.6, len(rows) * 1.75), dpi=110)
    for r, (name, cells) in enumerate(rows):
        for c, findings in enumerate(cells):
            patient = sample_patient(f"sheet{c}", stable_seed(seed, "sheet", c))
            img = render(patient, findings, Acquisition(noise_seed=c), size, view)
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            f = findings[0] if findings else None
            words = [w for w in (f.severity, f.laterality, f.zone, f.kind) if w] if f else []
            ax.set_title(" ".join(words) or "-", fontsize=6)
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle("SynthCXR: one row per finding (same patients across rows)", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
