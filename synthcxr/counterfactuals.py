"""Counterfactual edits with ground truth: the same patient and acquisition, other findings.

SynthCXR knows the causal model of every study (``attributes.jsonl``: patient, acquisition,
findings), so an edited report has a *true* counterfactual image: :func:`render` with the new
findings. :func:`counterfactual_edits` picks studies of a split and, per study, either removes one
of its findings or adds one it lacks, and returns the source image, the new report, the truth
and what changed -- everything ``evaluation.loop.counterfactual_metrics`` needs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .renderer import render
from .reports import write_report
from .world import FINDING_SPECS, Acquisition, Finding, Patient, stable_seed

__all__ = ["CounterfactualEdit", "counterfactual_edits", "read_attributes", "EDITABLE_FINDINGS"]

#: Findings an edit adds: large enough to be visible at 64 px.
EDITABLE_FINDINGS = ("Pleural Effusion", "Cardiomegaly", "Pneumothorax", "Consolidation")


@dataclass
class CounterfactualEdit:
    """One edit: ``source`` and ``true_cf`` are (S, S) float arrays in [0, 1] (frontal view)."""

    study_id: str
    source: np.ndarray
    source_report: str
    new_report: str
    true_cf: np.ndarray
    added: list[str]
    removed: list[str]


def read_attributes(data_dir: str | os.PathLike[str]) -> list[dict]:
    """The records of ``attributes.jsonl`` in a SynthCXR folder."""
    path = Path(data_dir) / "attributes.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: counterfactual ground truth needs a SynthCXR folder")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _new_finding(name: str, rng: np.random.Generator) -> Finding:
    spec = FINDING_SPECS[name]
    # The larger severities, so that the edit is visible at the rendered size.
    def pick(options: tuple[str, ...]) -> str | None:
        return str(rng.choice(options)) if options else None

    return Finding(name, severity=pick(spec.severities[-2:]), laterality=pick(spec.lateralities),
                   zone=pick(spec.zones), kind=pick(spec.kinds), seed=int(rng.integers(0, 2**31)))


def counterfactual_edits(data_dir: str | os.PathLike[str], split: str = "test", n: int = 32, seed: int = 0,
                         editable: Sequence[str] = EDITABLE_FINDINGS) -> list[CounterfactualEdit]:
    """Up to ``n`` edits of clean studies (no degradation, report matches the image) of ``split``."""
    data_dir = Path(data_dir)
    size = int(json.loads((data_dir / "synthcxr.json").read_text())["config"]["size"])
    records = [r for r in read_attributes(data_dir)
               if r["split"] == split and not r.get("degradation") and not r.get("wrong_report")]
    annotation = json.loads((data_dir / "annotation.json").read_text())
    reports = {r["id"]: r["report"] for r in annotation.get(split, [])}
    rng = np.random.default_rng(seed)
    rng.shuffle(records)  # type: ignore[arg-type]
    edits = []
    for rec in records[:n]:
        erng = np.random.default_rng(stable_seed(seed, "edit", rec["id"]))
        findings = [Finding.from_dict(f) for f in rec["findings"]]
        present = {f.name for f in findings}
        removable = [f for f in findings if f.name in editable]
        addable = [name for name in editable if name not in present]
        if removable and (not addable or erng.random() < 0.5):
            gone = removable[int(erng.integers(len(removable)))]
            new, added, removed = [f for f in findings if f is not gone], [], [gone.name]
        else:
            name = addable[int(erng.integers(len(addable)))]
            new, added, removed = findings + [_new_finding(name, erng)], [name], []
        with Image.open(data_dir / "images" / rec["patient_id"] / f"{rec['id']}_frontal.png") as im:
            source = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        true_cf = render(Patient.from_dict(rec["patient"]), new, Acquisition.from_dict(rec["acquisition"]), size,
                         "frontal")
        report = write_report(new, np.random.default_rng(stable_seed(seed, "edit-report", rec["id"]))).text
        edits.append(CounterfactualEdit(rec["id"], source, reports[rec["id"]], report, true_cf, added, removed))
    return edits
