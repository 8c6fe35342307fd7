"""``radloop data iu-xray`` / ``radloop data mimic-cxr``: the official releases -> the suite's layout.

Both importers write what every trainer reads (R2Gen's layout)::

    OUT/annotation.json     {"train": [...], "val": [...], "test": [...]}, written last (its presence
                            marks a finished import)
    OUT/images/...          every kept view as an 8-bit grey PNG, shorter side ``size`` (never grown;
                            0 keeps the size)
    OUT/labels.csv          MIMIC-CXR only: the release's CheXpert labels (1, 0, -1 uncertain, blank)
    OUT/import_summary.json what was kept and why the rest was left out

**IU X-ray** (Open-i ``NLMCXR_reports.tgz`` + the extracted ``NLMCXR_png.tgz``), R2Gen's protocol:
a report is kept when its findings section is non-empty and it lists at least two images; the
first two, in the report's order (frontal, lateral in nearly every report), are its views; the
report text is the findings (``sections="findings+impression"`` appends the impression). This
keeps 2,955 of the 3,955 reports, R2Gen's count. Differences from R2Gen's own ``annotation.json``
(which a user can still pass directly): the split is the suite's hash of the report id
(:func:`shared.data.iu_xray.iu_split`, 70/10/20, the same report always in the same split) instead
of R2Gen's one random draw; ids are the report ids (``CXR1``) instead of the first image's stem;
the text keeps its case and punctuation (the tokenizer cleans it as R2Gen does when it is fitted).

**MIMIC-CXR-JPG 2.x** (``--root`` with ``mimic-cxr-2.0.0-{split,metadata,chexpert}.csv.gz``,
``files/pXX/pSUBJECT/sSTUDY/DICOM.jpg`` and ``mimic-cxr-reports.zip`` from MIMIC-CXR): one entry per
study with the official split (``validate`` -> ``val``), one frontal view (PA preferred over AP,
then the earliest dicom id) and, with ``max_views=2``, the first lateral after it; the report
text is the FINDINGS section of the free-text report (split at its upper-case section headers).
Studies without a frontal view or without findings are left out and counted. R2Gen's MIMIC
annotation instead has one entry per image (any view) with its study's findings.

Resumable: images already written are skipped, so an interrupted import reruns where it stopped.
A missing release file, a missing or unreadable image (``on_bad_image="raise"``) stops with a
one-line :class:`DataError` naming it; ``on_bad_image="skip"`` leaves such studies out and lists them
in the summary.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from ..labels import CHEXPERT_LABELS
from .errors import DataError
from .iu_xray import iu_split, read_iu_reports
from .prepare import convert_images, drop_bad_studies, warn_dropped

logger = logging.getLogger(__name__)

__all__ = ["import_iu_xray", "import_mimic_cxr", "report_sections", "SECTIONS"]

#: which report sections become the training text
SECTIONS = ("findings", "findings+impression")

MIMIC_FILES = {
    "split": "mimic-cxr-2.0.0-split.csv.gz",
    "metadata": "mimic-cxr-2.0.0-metadata.csv.gz",
    "chexpert": "mimic-cxr-2.0.0-chexpert.csv.gz",
    "reports": "mimic-cxr-reports.zip",
}
_FRONTAL = ("PA", "AP")
_LATERAL = ("LATERAL", "LL")
_MIMIC_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def _check_options(sections: str, size: int, max_views: int) -> None:
    if sections not in SECTIONS:
        raise ValueError(f"sections must be one of {SECTIONS}, got {sections!r}")
    if size != 0 and size < 8:
        raise ValueError(f"size must be 0 (keep) or at least 8, got {size}")
    if max_views < 1:
        raise ValueError(f"max_views must be at least 1, got {max_views}")


def _join(*parts: str) -> str:
    return " ".join(" ".join(p.split()) for p in parts if p and p.strip())


def _write(out: Path, studies: list[dict[str, Any]], jobs: list[tuple[str, str, int]], workers: int,
           progress: bool, on_bad_image: str, summary: dict[str, Any], labels_csv: str | None = None) -> dict[str, Any]:
    """Convert the images, drop studies with a bad one, write labels, summary and (last) the annotation."""
    out.mkdir(parents=True, exist_ok=True)
    written, bad = convert_images(jobs, workers, progress, on_bad_image, desc="import")
    source_of = {target: source for source, target, _ in jobs}
    images = out / "images"
    readable, dropped = drop_bad_studies(studies, lambda rel: source_of[str(images / rel)] in bad)
    kept: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    for study in readable:
        kept[study["split"]].append(study)
    if labels_csv is not None:
        atomic_write_text(out / "labels.csv", labels_csv)
    summary = {**summary, "studies": {k: len(v) for k, v in kept.items()}, "images": len(jobs),
               "written": written, "skipped_existing": len(jobs) - written - len(bad), "bad_images": len(bad)}
    if bad:
        summary.update(bad=bad, dropped=dropped)
        warn_dropped(dropped, bad, out / "import_summary.json")
    atomic_write_text(out / "import_summary.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(out / "annotation.json", json.dumps(kept, indent=1) + "\n")  # last: marks a finished import
    return summary


def _png_index(images: Path) -> dict[str, Path]:
    """``image id -> file`` for every PNG under the extracted ``NLMCXR_png`` folder (any depth)."""
    return {p.stem: p for p in sorted(images.rglob("*.png"))}


def import_iu_xray(reports: str | os.PathLike[str] | None, images: str | os.PathLike[str],
                   out: str | os.PathLike[str], size: int = 512, sections: str = "findings", max_views: int = 2,
                   workers: int = 0, on_bad_image: str = "raise", progress: bool = True) -> dict[str, Any]:
    """Import Open-i's IU X-ray release into ``out`` (see the module docstring); returns the summary.

    Args:
        reports: ``NLMCXR_reports.tgz`` (None: the copy inside the torchxrayvision wheel).
        images: the folder ``NLMCXR_png.tgz`` was extracted into (``CXR1_1_IM-0001-3001.png``, ...).
        out: output folder. size: shorter side of the written PNGs (0 keeps it).
        sections: ``"findings"`` (R2Gen) or ``"findings+impression"``.
        max_views: views kept per study (a study needs two, R2Gen's rule, whatever this is).
    """
    _check_options(sections, size, max_views)
    images = Path(images)
    if not images.is_dir():
        hint = " (extract NLMCXR_png.tgz first and pass its folder)" if images.is_file() else ""
        raise DataError(f"--images {images} is not a folder{hint}")
    out = Path(out)
    index = _png_index(images)
    studies, jobs = [], []
    reasons = {"no findings": 0, "fewer than two images": 0}
    for report in read_iu_reports(reports):
        if not report.findings.strip():
            reasons["no findings"] += 1
            continue
        if len(report.image_ids) < 2:
            reasons["fewer than two images"] += 1
            continue
        text = _join(report.findings, report.impression if sections == "findings+impression" else "")
        paths = []
        for image_id in report.image_ids[:max_views]:
            rel = f"{image_id}.png"
            source = index.get(image_id, images / rel)  # a missing one is then named by the converter
            jobs.append((str(source), str(out / "images" / rel), size))
            paths.append(rel)
        studies.append({"id": report.uid, "report": text, "image_path": paths, "split": iu_split(report.uid),
                        "impression": report.impression, "mesh": report.mesh_major})
    summary = {"source": "IU X-ray (Open-i)", "reports": str(reports or "torchxrayvision wheel"),
               "images_folder": str(images), "size": size, "sections": sections, "max_views": max_views,
               "left_out": reasons}
    return _write(out, studies, jobs, workers, progress, on_bad_image, summary)


# -- MIMIC-CXR ---------------------------------------------------------------------------------------

_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z /&()-]*[A-Z)])[ \t]*:", re.MULTILINE)


def report_sections(text: str) -> dict[str, str]:
    """A MIMIC-CXR free-text report split at its upper-case headers: ``{"FINDINGS": ..., "IMPRESSION": ...}``.

    Text before the first header (``FINAL REPORT``, wet read notes) is kept under ``""``; whitespace
    is collapsed; a header seen twice keeps both texts, joined.
    """
    out: dict[str, str] = {}
    matches = list(_HEADER.finditer(text))
    out[""] = _join(text[: matches[0].start()] if matches else text)
    for n, m in enumerate(matches):
        end = matches[n + 1].start() if n + 1 < len(matches) else len(text)
        out[m.group(1).strip()] = _join(out.get(m.group(1).strip(), ""), text[m.end():end])
    return out


def _read_csv_gz(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"MIMIC-CXR-JPG file not found: {path} (expected in --root)")
    try:
        with gzip.open(path, "rt", newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, EOFError, csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from None


def _need(rows: list[dict[str, str]], path: Path, columns: Iterable[str]) -> None:
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}")


class _Reports:
    """The free-text reports by ``(subject, study)``, from ``mimic-cxr-reports.zip`` or its extracted folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.names: dict[tuple[str, str], str] = {}
        if path.is_file():
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as err:
                raise DataError(f"cannot read MIMIC-CXR reports {path}: {err}") from None
            names: Iterable[str] = self.zip.namelist()
        elif path.is_dir():
            names = (str(p.relative_to(path)) for p in path.rglob("s*.txt"))
        else:
            raise DataError(f"MIMIC-CXR reports not found: {path} (mimic-cxr-reports.zip from MIMIC-CXR, or "
                            "its extracted folder; give --reports)")
        for name in names:
            parts = Path(name).parts
            if len(parts) >= 2 and parts[-1].endswith(".txt"):
                self.names[(parts[-2].removeprefix("p"), Path(parts[-1]).stem.removeprefix("s"))] = name

    def get(self, subject: str, study: str) -> str | None:
        name = self.names.get((subject, study))
        if name is None:
            return None
        if self.zip is not None:
            return self.zip.read(name).decode("utf-8", errors="replace")
        return (self.path / name).read_text(encoding="utf-8", errors="replace")


def _mimic_labels(rows: list[dict[str, str]], study_ids: set[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", *CHEXPERT_LABELS])
    for row in rows:
        if row["study_id"] in study_ids:
            writer.writerow([row["study_id"], *(row.get(name, "") for name in CHEXPERT_LABELS)])
    return buf.getvalue()


def _pick_views(images: list[Mapping[str, str]], max_views: int) -> list[Mapping[str, str]]:
    """One frontal (PA before AP, then the earliest dicom id) and, for ``max_views`` 2, a lateral."""
    frontal = sorted((r for r in images if r.get("ViewPosition") in _FRONTAL),
                     key=lambda r: (_FRONTAL.index(r["ViewPosition"]), r["dicom_id"]))
    if not frontal:
        return []
    lateral = sorted((r for r in images if r.get("ViewPosition") in _LATERAL), key=lambda r: r["dicom_id"])
    return [frontal[0], *lateral[: max_views - 1]]


def _mimic_studies(by_study: dict[str, list[dict[str, str]]], texts: _Reports, root: Path, out: Path, size: int,
                   sections: str, max_views: int) -> tuple[list[dict[str, Any]], list[tuple[str, str, int]],
                                                          dict[str, int]]:
    """The kept studies, their image jobs, and how many were left out for which reason."""
    studies, jobs = [], []
    reasons = {"no frontal view": 0, "no report": 0, "no findings": 0}
    for study_id, images in by_study.items():
        views = _pick_views(images, max_views)
        if not views:
            reasons["no frontal view"] += 1
            continue
        subject = views[0]["subject_id"]
        text = texts.get(subject, study_id)
        if text is None:
            reasons["no report"] += 1
            continue
        parts = report_sections(text)
        if not parts.get("FINDINGS"):
            reasons["no findings"] += 1
            continue
        report = _join(parts["FINDINGS"], parts.get("IMPRESSION", "") if sections != "findings" else "")
        paths = []
        for view in views:
            rel = f"p{subject[:2]}/p{subject}/s{study_id}/{view['dicom_id']}"
            jobs.append((str(root / "files" / f"{rel}.jpg"), str(out / "images" / f"{rel}.png"), size))
            paths.append(f"{rel}.png")
        studies.append({"id": study_id, "report": report, "image_path": paths, "patient_id": subject,
                        "split": _MIMIC_SPLITS[views[0]["split"]], "views": [v["ViewPosition"] for v in views],
                        "impression": parts.get("IMPRESSION", "")})
    return studies, jobs, reasons


def import_mimic_cxr(root: str | os.PathLike[str], out: str | os.PathLike[str],
                     reports: str | os.PathLike[str] | None = None, size: int = 512, sections: str = "findings",
                     max_views: int = 1, workers: int = 0, on_bad_image: str = "raise",
                     progress: bool = True) -> dict[str, Any]:
    """Import MIMIC-CXR-JPG 2.x into ``out`` (see the module docstring); returns the summary.

    Args:
        root: the MIMIC-CXR-JPG folder (the three ``.csv.gz`` files and ``files/``).
        reports: ``mimic-cxr-reports.zip`` or its extracted folder (default: ``ROOT/mimic-cxr-reports.zip``).
        max_views: 1 (the frontal view) or 2 (frontal + lateral where the study has one).
    """
    _check_options(sections, size, max_views)
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise DataError(f"--root {root} is not a folder (the MIMIC-CXR-JPG release)")
    split_path, meta_path = root / MIMIC_FILES["split"], root / MIMIC_FILES["metadata"]
    split_rows, meta_rows = _read_csv_gz(split_path), _read_csv_gz(meta_path)
    _need(split_rows, split_path, ("dicom_id", "study_id", "subject_id", "split"))
    _need(meta_rows, meta_path, ("dicom_id", "ViewPosition"))
    texts = _Reports(Path(reports) if reports is not None else root / MIMIC_FILES["reports"])
    view_of = {r["dicom_id"]: r for r in meta_rows}
    by_study: dict[str, list[dict[str, str]]] = {}
    for row in split_rows:
        if row["split"] not in _MIMIC_SPLITS:
            raise DataError(f"{split_path}: dicom {row['dicom_id']} has split {row['split']!r}; "
                            f"expected one of {sorted(_MIMIC_SPLITS)}")
        by_study.setdefault(row["study_id"], []).append({**view_of.get(row["dicom_id"], {}), **row})
    studies, jobs, reasons = _mimic_studies(by_study, texts, root, out, size, sections, max_views)
    if reasons["no report"]:
        logger.warning("%d studies have no report in %s and are left out", reasons["no report"], texts.path)
    chexpert = root / MIMIC_FILES["chexpert"]
    labels = None
    if chexpert.is_file():
        rows = _read_csv_gz(chexpert)
        _need(rows, chexpert, ("study_id", *CHEXPERT_LABELS))
        labels = _mimic_labels(rows, {s["id"] for s in studies})
    else:
        logger.info("no %s in %s: no labels.csv (the trainers then read labels from the reports)", chexpert.name, root)
    summary = {"source": "MIMIC-CXR-JPG", "root": str(root), "reports": str(texts.path), "size": size,
               "sections": sections, "max_views": max_views, "left_out": reasons}
    return _write(out, studies, jobs, workers, progress, on_bad_image, summary, labels)
