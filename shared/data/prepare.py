"""``radloop data prepare``: decode and resize a data set's images once, for training.

MIMIC-CXR's JPGs are ~2,500 px; a 256 px model decoding them at every epoch spends most of its data
time in JPEG decoding and resizing. :func:`prepare_dataset` writes every image as an 8-bit grey PNG
whose shorter side is ``size`` (aspect kept, Lanczos) under ``<out>/images/`` with the source's
relative path, then ``<out>/annotation.json`` (R2Gen layout, the same studies and fields, image
paths pointing at the new files) and a copy of ``labels.csv`` when the source has one.

* parallel: ``workers`` processes (0: in this process);
* resumable: each image is written to a temporary name and renamed, so an interrupted run leaves
  only complete files under final names, and a rerun skips every image already there;
  ``annotation.json`` is written last, so its presence marks a finished data set;
* bad images: ``on_bad_image="raise"`` stops at the first with its name; ``"skip"`` leaves those
  studies out and lists them in ``<out>/prepare_report.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from ..io import atomic_write_text
from .dataset import _IMAGE_ERRORS, SPLITS, DataError, check_inside_root, load_records, resolve_image_root, to_grey

logger = logging.getLogger(__name__)

__all__ = ["prepare_dataset", "prepared_name", "convert_images", "drop_bad_studies", "warn_dropped"]


def prepared_name(relative: str) -> str:
    """The prepared file's path under ``images/`` for a source image path (always ``.png``)."""
    return str(Path(relative).with_suffix(".png"))


def _prepare_one(job: tuple[str, str, int]) -> tuple[str, str | None, bool]:
    """(source, target, size) -> (source, error or None, whether it was written now); size 0 keeps the size."""
    source, target, size = job
    out = Path(target)
    if out.is_file():
        return source, None, False
    try:
        with Image.open(source) as im:
            im.load()
            grey = to_grey(im)
    except FileNotFoundError:
        return source, "missing", False
    except _IMAGE_ERRORS as err:
        return source, f"{type(err).__name__}: {err}", False
    w, h = grey.size
    scale = size / min(w, h) if size > 0 else 1.0
    if scale < 1:
        grey = grey.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    grey.save(tmp, format="PNG")
    os.replace(tmp, out)
    return source, None, True


def _run(jobs: list[tuple[str, str, int]], workers: int, progress: bool,
         desc: str) -> Iterable[tuple[str, str | None, bool]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit="image", disable=not progress)
    if workers <= 0:
        for job in jobs:
            yield _prepare_one(job)
            bar.update(1)
    else:
        with ProcessPoolExecutor(workers) as pool:
            for result in pool.map(_prepare_one, jobs, chunksize=64):
                yield result
                bar.update(1)
    bar.close()


def convert_images(jobs: list[tuple[str, str, int]], workers: int = 0, progress: bool = True,
                   on_bad_image: str = "raise", desc: str = "prepare") -> tuple[int, dict[str, str]]:
    """Write each ``(source, target, size)`` job as a grey PNG (resumable: finished targets are skipped).

    Returns (images written now, ``{source: why}`` of the unreadable ones). With
    ``on_bad_image="raise"`` the first unreadable or missing source stops the run with a
    :class:`DataError` naming it; every image finished before it stays on disk for the rerun.
    """
    if on_bad_image not in ("raise", "skip"):
        raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
    written, bad = 0, {}
    for source, error, new in _run(jobs, workers, progress, desc):
        if error is not None:
            if on_bad_image == "raise":
                raise DataError(f"cannot {desc} image {source}: {error} (on_bad_image='skip' leaves such studies out)")
            bad[source] = error
        written += int(new)
    return written, bad


def drop_bad_studies(records: list[dict[str, Any]], is_bad: Callable[[str], bool]
                     ) -> tuple[list[dict[str, Any]], list[str]]:
    """Split studies by their images (``record["image_path"]``, each tested with ``is_bad``): (the studies whose
    every image was converted, the ids of the others). A study is kept whole or not at all, so no report is
    left with a missing view."""
    kept, dropped = [], []
    for rec in records:
        if any(is_bad(rel) for rel in rec["image_path"]):
            dropped.append(rec["id"])
        else:
            kept.append(rec)
    return kept, dropped


def warn_dropped(dropped: list[str], bad: dict[str, str], report: Path) -> None:
    """Log, once, how many studies were left out for unreadable images, with the first image and why."""
    logger.warning("left out %d studies with unreadable images, e.g. %s (%s); see %s", len(dropped),
                   next(iter(bad)), next(iter(bad.values())), report)


def prepare_dataset(annotation: str | os.PathLike[str], out: str | os.PathLike[str], size: int = 256,
                    workers: int = 0, image_root: str | os.PathLike[str] | None = None,
                    on_bad_image: str = "raise", progress: bool = True,
                    allow_outside_root: bool = False) -> dict[str, Any]:
    """Resize every image of ``annotation`` once into ``out``; returns counts (see the module docstring).

    Image paths must stay inside the image root unless ``allow_outside_root`` (see
    :func:`shared.data.dataset.check_inside_root`).
    """
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    if on_bad_image not in ("raise", "skip"):
        raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
    annotation, out = Path(annotation), Path(out)
    if out.resolve() == annotation.parent.resolve():
        raise ValueError(f"--out {out} is the source folder; prepare into another folder")
    records = load_records(annotation)
    root = resolve_image_root(annotation, records, image_root)
    if not allow_outside_root:
        check_inside_root(annotation, records, root)
    jobs, seen = [], set()
    for rec in records:
        for rel in rec["image_path"]:
            if rel not in seen:
                seen.add(rel)
                jobs.append((str(root / rel), str(out / "images" / prepared_name(rel)), size))
    written, bad = convert_images(jobs, workers, progress, on_bad_image)
    bad_rel = {os.path.relpath(p, root) for p in bad}
    readable, dropped = drop_bad_studies(records, bad_rel.__contains__)
    kept: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for rec in readable:
        split = rec.get("split") if rec.get("split") in SPLITS else "train"
        kept[split].append({**rec, "image_path": [prepared_name(rel) for rel in rec["image_path"]]})
    labels = annotation.parent / "labels.csv"
    if labels.is_file():
        shutil.copy2(labels, out / "labels.csv")
    summary = {"images": len(jobs), "written": written, "skipped_existing": len(jobs) - written - len(bad),
               "bad_images": len(bad), "studies": sum(len(v) for v in kept.values()), "dropped_studies": len(dropped),
               "size": size, "source": str(annotation)}
    if bad:
        atomic_write_text(out / "prepare_report.json",
                          json.dumps({**summary, "bad": bad, "dropped": dropped}, indent=1) + "\n")
        warn_dropped(dropped, bad, out / "prepare_report.json")
    # last: its presence marks a complete prepared data set
    atomic_write_text(out / "annotation.json", json.dumps(kept, indent=1) + "\n")
    return summary
