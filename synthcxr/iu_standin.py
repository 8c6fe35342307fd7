"""An IU X-ray stand-in: the real IU report text with SynthCXR images of what each report says.

No IU X-ray images are on these machines, but the 3,955 Open-i reports are. For each report the
report labeler reads its findings section (its impression when it has none): every positive
finding SynthCXR draws becomes a :class:`~synthcxr.world.Finding` with the severity and
side the text gives ("Lung Opacity" alone becomes a small consolidation; uncertain mentions are not
drawn, as clinical efficacy counts them negative). Each image id the report lists is rendered,
the first as a frontal view, the second as a lateral, any further one frontal again, and written
as ``<image id>.png``: the layout of Open-i's extracted ``NLMCXR_png.tgz``, so the stand-in goes
through the importer (``radloop data iu-xray``) exactly as the real images would.

The result has real report text at real image size; its images are phantoms, so scores on it say
how the pipeline behaves at that size and text, not how a model reads real radiographs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from shared.data.iu_xray import IUReport, read_iu_reports
from shared.io import atomic_write_bytes, atomic_write_text
from shared.text.labeler import merge_attributes

from .generate import to_png
from .renderer import render
from .world import FINDING_SPECS, Finding, sample_acquisition, sample_patient, stable_seed

__all__ = ["report_findings", "render_iu_standin"]

#: severity words the labeler returns, as an ordinal level
_LEVEL = {"trace": 0, "small": 0, "mild": 0, "moderate": 1, "large": 2, "severe": 2}
_DEVICE_KINDS = (("pacemaker", "pacemaker"), ("pacer", "pacemaker"), ("tube", "endotracheal tube"),
                 ("catheter", "central venous catheter"), ("line", "central venous catheter"),
                 ("port", "central venous catheter"))
_OPACITIES = ("Consolidation", "Pneumonia", "Atelectasis", "Edema", "Lung Lesion")


def _pick(allowed: tuple[str, ...], wanted: list[str], seed: int) -> str | None:
    """The first wanted value the finding takes, else one of the allowed ones chosen by ``seed``."""
    if not allowed:
        return None
    return next((w for w in wanted if w in allowed), allowed[seed % len(allowed)])


def _finding(name: str, severity: str | None, laterality: str | None, zones: list[str], text: str,
             seed: int) -> Finding:
    spec = FINDING_SPECS[name]
    level = _LEVEL.get(severity or "", 0)
    sev = spec.severities[min(level, len(spec.severities) - 1)] if spec.severities else None
    kind = None
    if name == "Lung Lesion":
        kind = "mass" if "mass" in text else "nodule"
    elif name == "Support Devices":
        kind = next((k for word, k in _DEVICE_KINDS if word in text), "central venous catheter")
    elif spec.kinds:
        kind = spec.kinds[0]
    return Finding(name, sev, _pick(spec.lateralities, [laterality or ""], seed), _pick(spec.zones, zones, seed >> 8),
                   kind, seed)


def report_findings(text: str, uid: str, labeler: Any) -> list[Finding]:
    """What SynthCXR draws for a report: its positive findings with the text's severity and side.

    Args:
        text: report text. uid: the report id (fixes each finding's shape and position).
        labeler: a :class:`shared.text.labeler.ReportLabeler`.
    """
    result = labeler.label(text)  # one labeler pass gives both the labels and the attributes
    attributes = merge_attributes(result.attributes)
    lowered = text.lower()
    positive = [name for name, value in result.labels.items() if value == 1.0 and name in FINDING_SPECS]
    if result.labels.get("Lung Opacity") == 1.0 and not any(n in positive for n in _OPACITIES):
        positive.append("Consolidation")
        attributes.setdefault("Consolidation", attributes.get("Lung Opacity"))
    out = []
    for name in positive:
        a = attributes.get(name)
        out.append(_finding(name, a.severity if a else None, a.laterality if a else None,
                            list(a.zones) if a else [], lowered, stable_seed("iu-standin", uid, name)))
    return out


def _text(report: IUReport) -> str:
    return report.findings or report.impression


def _render_report(job: tuple[IUReport, list[dict[str, Any]], str, int]) -> int:
    """Render every image of one report that is not on disk yet; returns how many were written."""
    report, findings, out, size = job
    patient = sample_patient(report.uid, stable_seed("iu-standin", report.uid, "patient"))
    acquisition = sample_acquisition(stable_seed("iu-standin", report.uid, "acquisition"))
    drawn = [Finding.from_dict(f) for f in findings]
    written = 0
    for n, image_id in enumerate(report.image_ids):
        path = Path(out) / f"{image_id}.png"
        if path.is_file():
            continue
        image = render(patient, drawn, acquisition, size, "lateral" if n == 1 else "frontal")
        atomic_write_bytes(path, to_png(image))
        written += 1
    return written


def _run(jobs: list[tuple[IUReport, list[dict[str, Any]], str, int]], workers: int) -> Iterator[int]:
    if workers <= 0:
        yield from map(_render_report, jobs)
    else:
        with ProcessPoolExecutor(workers) as pool:
            yield from pool.map(_render_report, jobs, chunksize=16)


def render_iu_standin(out: str | os.PathLike[str], size: int = 224, reports: str | os.PathLike[str] | None = None,
                      workers: int = 0, progress: bool = True, limit: int | None = None) -> dict[str, Any]:
    """Render every image of every IU report into ``out`` (``<image id>.png``) and ``out/standin.json``.

    Resumable: images already there are kept. ``limit`` renders only the first reports (tests).
    Returns ``{"reports", "images", "written", "size", "findings": {name: reports drawing it}}``.
    """
    from tqdm.auto import tqdm

    from shared.text.labeler import ReportLabeler

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labeler = ReportLabeler()
    chosen = read_iu_reports(reports)[:limit]
    drawn = {r.uid: [f.to_dict() for f in report_findings(_text(r), r.uid, labeler)] for r in chosen}
    jobs = [(r, drawn[r.uid], str(out), size) for r in chosen if r.image_ids]
    written = 0
    with tqdm(total=len(jobs), desc="iu stand-in", unit="report", disable=not progress) as bar:
        for n in _run(jobs, workers):
            written += n
            bar.update(1)
    counts: dict[str, int] = {}
    for findings in drawn.values():
        for f in findings:
            counts[f["name"]] = counts.get(f["name"], 0) + 1
    summary = {"reports": len(chosen), "images": sum(len(r.image_ids) for r in chosen), "written": written,
               "size": size, "findings": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}
    atomic_write_text(out / "standin.json", json.dumps({**summary, "drawn": drawn}, indent=1) + "\n")
    return summary
