"""Report-image datasets over the R2Gen ``annotation.json`` layout and CSV/JSONL manifests.

R2Gen layout (IU X-ray, MIMIC-CXR; SynthCXR writes the same)::

    {"train": [{"id": ..., "report": ..., "image_path": ["a.png", "b.png"], "split": "train"}, ...],
     "val": [...], "test": [...]}

Manifests (CSV or JSONL) have one study a row with columns ``id``, ``image_path`` (several paths
separated by ``;`` in CSV, a list in JSONL), ``report``, ``split`` and optionally
``patient_id`` and CheXpert label columns. Image paths are relative to ``image_root`` (default:
the folder of the annotation file).

A sample is a dict:

* ``images``: float tensor (V, 1, H, W), V views in annotation order (``max_views`` of them,
  the last one repeated when a study has fewer);
* ``report``: the report text; ``study_id``, ``patient_id`` (``""`` when unknown);
* ``labels``: float tensor (14,) in CheXpert order when labels are available, else absent;
* ``image_paths``: the resolved files.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..io import read_json
from ..labels import CHEXPERT_LABELS
from .errors import DataError
from .transforms import build_transform

logger = logging.getLogger(__name__)

__all__ = ["ReportImageDataset", "DataError", "load_records", "read_labels_csv", "collate_samples"]

SPLITS = ("train", "val", "test")


def _records_from_r2gen(data: Any, path: Path) -> list[dict[str, Any]]:
    if not isinstance(data, Mapping) or not any(k in data for k in SPLITS):
        raise DataError(f"{path} has no 'train'/'val'/'test' keys; expected the R2Gen annotation layout")
    out = []
    for split in SPLITS:
        for i, entry in enumerate(data.get(split, [])):
            if not isinstance(entry, Mapping):
                raise DataError(f"{path}: entry {i} of '{split}' is not an object")
            out.append({**entry, "split": entry.get("split", split)})
    return out


def _records_from_csv(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        if row.get("image_path") is not None:
            row["image_path"] = [p for p in row["image_path"].split(";") if p]
    return rows


def _records_from_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {n} is not valid JSON: {err.msg}") from None
    return out


def load_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read an annotation file (R2Gen JSON, CSV or JSONL) into a list of study dicts."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        records = _records_from_r2gen(read_json(path, DataError), path)
    elif suffix == ".csv":
        records = _records_from_csv(path)
    elif suffix == ".jsonl":
        records = _records_from_jsonl(path)
    else:
        raise DataError(f"{path}: unknown annotation format '{suffix}'; use .json (R2Gen), .csv or .jsonl")
    seen: dict[str, str] = {}
    for n, rec in enumerate(records):
        for key in ("id", "image_path", "report"):
            if key not in rec:
                raise DataError(f"{path}: study {n} has no '{key}' field")
        if not isinstance(rec["id"], (str, int)) or isinstance(rec["id"], bool) or str(rec["id"]) == "":
            raise DataError(f"{path}: study {n} has id {rec['id']!r}; ids must be non-empty strings or integers")
        rec["id"] = str(rec["id"])
        paths = rec["image_path"]
        if isinstance(paths, str):
            rec["image_path"] = paths = [paths]
        if not isinstance(paths, list) or not paths:
            raise DataError(f"{path}: study '{rec['id']}' has no image paths")
        if not all(isinstance(p, str) and p for p in paths):
            raise DataError(f"{path}: study '{rec['id']}' has image_path {paths!r}; expected a list of file names")
        if rec["report"] is not None and not isinstance(rec["report"], str):
            raise DataError(f"{path}: study '{rec['id']}' has a report of type {type(rec['report']).__name__}, "
                            "not text")
        split = str(rec.get("split", ""))
        if rec["id"] in seen:
            where = f"in '{seen[rec['id']]}' and '{split}'" if seen[rec["id"]] != split else f"twice in '{split}'"
            raise DataError(f"{path}: study id '{rec['id']}' appears {where}; ids must be unique")
        seen[rec["id"]] = split
        rec["patient_id"] = str(rec.get("patient_id", rec.get("subject_id", "")) or "")
        rec["report"] = "" if rec["report"] is None else rec["report"]
    _warn_patients_across_splits(records, path)
    return records


def _warn_patients_across_splits(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """A patient whose studies sit in two splits leaks between training and evaluation: say so once.

    Not an error: some published splits are study-level. Patient-disjoint splits are the norm
    (MIMIC-CXR's official split, SynthCXR).
    """
    splits: dict[str, set[str]] = {}
    for rec in records:
        if rec["patient_id"] and rec.get("split"):
            splits.setdefault(rec["patient_id"], set()).add(str(rec["split"]))
    leaking = sorted(p for p, s in splits.items() if len(s) > 1)
    if leaking:
        logger.warning("%s: %d patient(s) have studies in more than one split (e.g. '%s' in %s): "
                       "evaluation on those splits is not patient-disjoint", path, len(leaking), leaking[0],
                       sorted(splits[leaking[0]]))


def read_labels_csv(path: str | os.PathLike[str]) -> dict[str, list[float]]:
    """``id -> 14 CheXpert labels`` from a CSV with an ``id`` column and label columns (blank = NaN)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file not found: {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("id", *CHEXPERT_LABELS) if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}")
        out = {}
        for row in reader:
            try:
                out[row["id"]] = [float(row[c]) if row[c] != "" else math.nan for c in CHEXPERT_LABELS]
            except ValueError as err:
                raise DataError(f"{path}: study '{row['id']}' has a non-numeric label ({err})") from None
    return out


#: what PIL raises for an unreadable, truncated or absurdly large image file
_IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _check_image(path: Path) -> str | None:
    """Why this file is unusable, or None."""
    if not path.is_file():
        return "missing"
    if _is_dicom(path):
        return "DICOM (convert to PNG/JPEG first)"
    try:
        with Image.open(path) as im:
            im.verify()
    except _IMAGE_ERRORS as err:
        return f"corrupt ({type(err).__name__})"
    return None


def to_grey(im: Image.Image) -> Image.Image:
    """An 8-bit grey ("L") image of any PIL mode.

    16-bit and 32-bit grey images ("I;16", "I", "F") are scaled by their bit depth, not clipped at 255
    as PIL's own conversion does: by 65535 when any value exceeds 4095, else by 4095 (12-bit
    detectors stored in 16-bit PNGs). Colour and alpha are dropped as PIL's "L" conversion does.
    """
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 4095 else 4095.0
        return Image.fromarray((np.clip(arr / top, 0, 1) * 255).round().astype(np.uint8), mode="L")
    return im.convert("L")


def resolve_image_root(annotation: Path, records: Sequence[Mapping[str, Any]],
                       image_root: str | os.PathLike[str] | None = None) -> Path:
    """The folder the records' image paths are relative to.

    A given ``image_root`` must be a folder. Without one: the annotation's own folder, unless the
    first image path exists only under ``images/`` beside the annotation (R2Gen's layout,
    ``data/iu_xray/annotation.json`` + ``data/iu_xray/images/``), which is then used and logged.
    """
    if image_root is not None:
        root = Path(image_root)
        if not root.is_dir():
            raise DataError(f"data.image_root {root} is not a folder (image paths of {annotation} are relative to it)")
        return root
    here = annotation.parent
    sample = next((p for rec in records for p in rec["image_path"]), None)
    if sample is None or (here / sample).exists():
        return here
    r2gen = here / "images"
    if (r2gen / sample).exists():
        logger.info("image paths of %s resolve against %s (R2Gen's images/ folder beside it)", annotation, r2gen)
        return r2gen
    return here  # the missing-image error then names the path it tried


def _outside(root: Path, resolved_root: Path, rel: str) -> str | None:
    """Why ``rel`` leaves ``root`` (an absolute path, a ``..`` step, or a symlink pointing out), else None."""
    path = Path(rel)
    if path.is_absolute():
        return "an absolute path"
    if ".." in path.parts:
        return "a '..' step"
    if not (root / path).resolve().is_relative_to(resolved_root):
        return "a symlink out of it"
    return None


def check_inside_root(annotation: Path, records: Sequence[Mapping[str, Any]], root: Path) -> None:
    """Raise a :class:`DataError` naming the first study whose image path leaves ``root``.

    An annotation file may come from anyone: without this check a path like ``../../home/me/.ssh/id``
    or a symlink would make a training run read (and a report show) any file the user can read.
    """
    resolved_root = root.resolve()
    for rec in records:
        for rel in rec["image_path"]:
            why = _outside(root, resolved_root, rel)
            if why is not None:
                raise DataError(f"{annotation}: study '{rec['id']}' has image path {rel!r}, which leaves the image "
                                f"root {root} ({why}); set data.allow_outside_root=true (--allow-outside-root) "
                                "if you trust this file")


class ReportImageDataset(Dataset):
    """Studies of one split with their images, report and (optional) labels.

    Args:
        annotation: R2Gen ``annotation.json``, or a ``.csv`` / ``.jsonl`` manifest.
        split: ``"train"``, ``"val"``, ``"test"`` or ``None`` for all.
        image_root: folder the image paths are relative to. Default: the annotation's folder, or
            R2Gen's ``images/`` folder beside the annotation when the paths resolve only there
            (``--image_dir data/iu_xray/images/``); the folder chosen is logged.
        image_size: output side; ``resize`` is the side before cropping (R2Gen: 128 -> 112).
        train: use the training transform (random crop, jitter).
        max_views: number of views per sample (IU X-ray: 2; MIMIC-CXR: 1).
        labels: a labels CSV (``id`` + CheXpert columns); default: ``labels.csv`` beside the
            annotation when present, else labels inside the records (``"labels"`` key).
        on_bad_image: ``"raise"``: a missing or corrupt image raises a :class:`DataError` naming
            the file; ``"skip"``: such studies are checked up front, dropped and counted in a warning.
        on_empty_report: ``"raise"`` or ``"skip"`` for studies whose report is empty.
        transform: overrides the built-in transform (PIL image -> (1, H, W) tensor).
        allow_outside_root: let image paths leave ``image_root`` (absolute paths, ``..``, symlinks out);
            off by default, so that an annotation file cannot point a run at arbitrary files.
    """

    def __init__(
        self,
        annotation: str | os.PathLike[str],
        split: str | None = "train",
        image_root: str | os.PathLike[str] | None = None,
        image_size: int = 112,
        resize: int | None = None,
        train: bool = False,
        max_views: int = 1,
        labels: str | os.PathLike[str] | None = None,
        on_bad_image: str = "raise",
        on_empty_report: str = "raise",
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        allow_outside_root: bool = False,
    ) -> None:
        for name, value in (("on_bad_image", on_bad_image), ("on_empty_report", on_empty_report)):
            if value not in ("raise", "skip"):
                raise ValueError(f"{name} must be 'raise' or 'skip', got {value!r}")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        if max_views < 1:
            raise ValueError(f"max_views must be >= 1, got {max_views}")
        self.annotation = Path(annotation)
        self.max_views = int(max_views)
        self.transform = transform or build_transform(image_size, resize, train=train)
        self.on_bad_image = on_bad_image
        records = [r for r in load_records(self.annotation) if split is None or r.get("split") == split]
        self.root = resolve_image_root(self.annotation, records, image_root)
        if not allow_outside_root:
            check_inside_root(self.annotation, records, self.root)

        label_map = self._load_labels(labels)
        kept, empty, bad = [], [], []
        for rec in records:
            if not rec["report"].strip():
                if on_empty_report == "raise":
                    raise DataError(f"{self.annotation}: study '{rec['id']}' has an empty report")
                empty.append(rec["id"])
                continue
            paths = [self.root / p for p in rec["image_path"]]
            if on_bad_image == "raise":
                missing = next((p for p in paths if not p.is_file()), None)
                if missing is not None:
                    raise DataError(f"image not found: {missing} (study '{rec['id']}' in {self.annotation})")
            else:
                problem = next(((p, why) for p in paths if (why := _check_image(p))), None)
                if problem is not None:
                    bad.append(f"{problem[0]} ({problem[1]})")
                    continue
            if label_map is not None:
                if rec["id"] not in label_map:
                    raise DataError(f"labels file has no row for study '{rec['id']}'")
                rec = {**rec, "labels": label_map[rec["id"]]}
            kept.append({**rec, "paths": paths})
        if bad:
            logger.warning("skipped %d studies with missing or corrupt images, e.g. %s", len(bad), bad[0])
        if empty:
            logger.warning("skipped %d studies with empty reports, e.g. '%s'", len(empty), empty[0])
        self.skipped = {"bad_image": len(bad), "empty_report": len(empty)}
        self.records = kept

    def _load_labels(self, labels: str | os.PathLike[str] | None) -> dict[str, list[float]] | None:
        if labels is not None:
            return read_labels_csv(labels)
        default = self.annotation.parent / "labels.csv"
        if self.annotation.suffix == ".json" and default.is_file():
            return read_labels_csv(default)
        return None

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, path: Path) -> torch.Tensor:
        try:
            with Image.open(path) as im:
                im.load()
                return self.transform(to_grey(im))
        except FileNotFoundError:
            raise DataError(f"image not found: {path}") from None
        except _IMAGE_ERRORS as err:
            if _is_dicom(path):
                raise DataError(f"cannot read image {path}: a DICOM file; convert it to PNG/JPEG first") from None
            raise DataError(f"cannot read image {path}: {type(err).__name__}: {err}") from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        paths: Sequence[Path] = rec["paths"][: self.max_views]
        views = [self._load(p) for p in paths]
        views += [views[-1]] * (self.max_views - len(views))
        sample: dict[str, Any] = {
            "images": torch.stack(views),
            "report": rec["report"],
            "study_id": rec["id"],
            "patient_id": rec["patient_id"],
            "image_paths": [str(p) for p in paths],
        }
        raw = rec.get("labels")
        if raw is not None:
            if isinstance(raw, Mapping):
                raw = [raw.get(name, math.nan) for name in CHEXPERT_LABELS]
            values = [math.nan if v is None or v == "" else float(v) for v in raw]
            if len(values) != len(CHEXPERT_LABELS):
                raise DataError(f"study '{rec['id']}': expected {len(CHEXPERT_LABELS)} labels, got {len(values)}")
            sample["labels"] = torch.tensor(values, dtype=torch.float32)
        return sample

    @property
    def reports(self) -> list[str]:
        return [r["report"] for r in self.records]


def collate_samples(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings and lists as lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
