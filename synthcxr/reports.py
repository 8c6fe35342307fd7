"""Write IU X-ray style reports from SynthCXR findings.

Each sentence is drawn from several paraphrases and carries its exact label effects
(1 positive, 0 negative, -1 uncertain), so the labels a correct report labeler must find
are known by construction. Severity and location words are the finding's own attributes,
so they match the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from shared.labels import CHEXPERT_LABELS, finalize_report_labels, merge_mentions

from .world import Finding

__all__ = ["SynthReport", "write_report"]

Effects = dict[str, float]

_ADVERB = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}
#: Findings whose reports may hedge ("may represent ..."), as radiologists do for them.
HEDGEABLE = ("Pneumonia", "Atelectasis", "Edema")


@dataclass
class SynthReport:
    """A report and the labels it states (CheXpert convention, NaN = not mentioned)."""

    findings: str
    impression: str
    labels: dict[str, float]
    sentences: list[tuple[str, Effects]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return f"{self.findings} {self.impression}".strip()


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _location(f: Finding) -> str:
    """'right lower lobe', 'lingula', ... for zone findings."""
    if f.zone == "middle" and f.laterality == "left":
        return "lingula"
    return f"{f.laterality} {f.zone} lobe"


def _words(f: Finding) -> dict[str, str]:
    sev = f.severity or ""
    return {
        "sev": sev,
        "adv": _ADVERB.get(sev, sev),
        "lat": f.laterality or "",
        "zone": f.zone or "",
        "loc": _location(f) if f.zone in ("upper", "middle", "lower") and f.laterality else "",
        "kind": f.kind or "",
        "rib": {"middle": "mid", "lower": "lower"}.get(f.zone or "", ""),
        "s": "s" if f.laterality == "bilateral" else "",
        "are": "are" if f.laterality == "bilateral" else "is a",
    }


# name -> list of (template, effects); ``None`` effects mean {name: 1}.
_POSITIVE: dict[str, list[str]] = {
    "Cardiomegaly": [
        "{sev} cardiomegaly.",
        "the heart is {adv} enlarged.",
        "there is {sev} enlargement of the cardiac silhouette.",
        "heart size is {adv} enlarged.",
    ],
    "Enlarged Cardiomediastinum": [
        "the mediastinum is {adv} widened.",
        "{sev} widening of the mediastinum.",
        "the cardiomediastinal silhouette is {adv} enlarged.",
    ],
    "Pleural Effusion": [
        "there {are} {sev} {lat} pleural effusion{s}.",
        "{sev} {lat} pleural effusion{s}.",
        "{sev} {lat} effusion{s} with blunting of the costophrenic angle{s}.",
    ],
    "Pneumothorax": [
        "there is a {sev} {lat} pneumothorax.",
        "{sev} {lat} apical pneumothorax.",
        "{lat} pneumothorax, {sev} in size.",
    ],
    "Consolidation": [
        "{sev} {loc} consolidation.",
        "there is a {sev} area of consolidation in the {loc}.",
        "focal consolidation in the {loc}, {sev} in extent.",
    ],
    "Pneumonia": [
        "{sev} {loc} pneumonia.",
        "{sev} patchy opacity in the {loc} consistent with pneumonia.",
        "airspace disease in the {loc}, compatible with {sev} pneumonia.",
    ],
    "Atelectasis/base": [
        "{sev} {lat} basilar atelectasis.",
        "linear opacity at the {lat} lung base consistent with {sev} atelectasis.",
        "{sev} subsegmental atelectasis at the {lat} base.",
    ],
    "Atelectasis/retrocardiac": [
        "{sev} {lat} retrocardiac atelectasis.",
        "{sev} atelectasis in the {lat} retrocardiac region.",
    ],
    "Edema": [
        "{sev} pulmonary edema.",
        "there is {sev} interstitial pulmonary edema.",
        "{sev} bilateral perihilar edema.",
    ],
    "Lung Lesion": [
        "{sev} {loc} {kind}.",
        "there is a {sev} {kind} in the {loc}.",
        "a {sev} pulmonary {kind} is seen in the {loc}.",
    ],
    "Fracture": [
        "{lat} {rib} rib fracture.",
        "there is an acute fracture of a {lat} {rib} rib.",
        "displaced fracture of a {lat} {rib} lateral rib.",
    ],
    "Support Devices/endotracheal tube": [
        "endotracheal tube in place.",
        "the endotracheal tube terminates above the carina.",
        "an endotracheal tube is present.",
    ],
    "Support Devices/central venous catheter": [
        "right subclavian central venous catheter with tip in the svc.",
        "a right-sided central venous catheter is in place.",
    ],
    "Support Devices/pacemaker": [
        "left chest wall pacemaker with leads in the heart.",
        "a cardiac pacemaker is present.",
    ],
}

# Hedged statements: the finding is uncertain (-1); an explicitly named opacity stays positive.
_HEDGED: dict[str, list[tuple[str, Effects]]] = {
    "Pneumonia": [
        ("{sev} patchy opacity in the {loc}, which may represent pneumonia.", {"Lung Opacity": 1.0}),
        ("possible {sev} pneumonia in the {loc}.", {}),
    ],
    "Atelectasis/base": [
        ("{lat} basilar opacity, likely {sev} atelectasis.", {"Lung Opacity": 1.0}),
        ("{sev} {lat} basilar atelectasis is not excluded.", {}),
    ],
    "Atelectasis/retrocardiac": [
        ("{lat} retrocardiac opacity may represent {sev} atelectasis.", {"Lung Opacity": 1.0}),
    ],
    "Edema": [
        ("possible {sev} pulmonary edema.", {}),
        ("findings may represent {sev} pulmonary edema.", {}),
    ],
}

# Templates that also name an opacity explicitly.
_MENTIONS_OPACITY = ("patchy opacity", "linear opacity", "airspace disease")

_NEGATIVE: dict[str, list[tuple[str, Effects]]] = {
    "heart": [
        ("the heart is normal in size.", {"Cardiomegaly": 0.0}),
        ("heart size is normal.", {"Cardiomegaly": 0.0}),
        ("normal heart size.", {"Cardiomegaly": 0.0}),
        ("the heart size is within normal limits.", {"Cardiomegaly": 0.0}),
    ],
    "heart+mediastinum": [
        ("the heart size and mediastinal contours are normal.",
         {"Cardiomegaly": 0.0, "Enlarged Cardiomediastinum": 0.0}),
        ("heart size and mediastinal contours are within normal limits.",
         {"Cardiomegaly": 0.0, "Enlarged Cardiomediastinum": 0.0}),
        ("the cardiomediastinal silhouette is normal.", {"Cardiomegaly": 0.0, "Enlarged Cardiomediastinum": 0.0}),
    ],
    "mediastinum": [
        ("the mediastinum is unremarkable.", {"Enlarged Cardiomediastinum": 0.0}),
        ("mediastinal contours are normal.", {"Enlarged Cardiomediastinum": 0.0}),
        ("normal mediastinal contours.", {"Enlarged Cardiomediastinum": 0.0}),
    ],
    "lungs": [
        ("the lungs are clear.", {"Lung Opacity": 0.0}),
        ("lungs are clear bilaterally.", {"Lung Opacity": 0.0}),
        ("no focal airspace opacity.", {"Lung Opacity": 0.0}),
    ],
    "consolidation": [
        ("no focal consolidation.", {"Consolidation": 0.0}),
        ("there is no focal airspace consolidation.", {"Consolidation": 0.0}),
    ],
    "pleural": [
        ("no pneumothorax or pleural effusion.", {"Pneumothorax": 0.0, "Pleural Effusion": 0.0}),
        ("no pleural effusion or pneumothorax.", {"Pneumothorax": 0.0, "Pleural Effusion": 0.0}),
        ("there is no pleural effusion or pneumothorax.", {"Pneumothorax": 0.0, "Pleural Effusion": 0.0}),
    ],
    "effusion": [
        ("no pleural effusion.", {"Pleural Effusion": 0.0}),
        ("there is no pleural effusion.", {"Pleural Effusion": 0.0}),
        ("no evidence of pleural effusion.", {"Pleural Effusion": 0.0}),
    ],
    "pneumothorax": [
        ("no pneumothorax.", {"Pneumothorax": 0.0}),
        ("there is no evidence of pneumothorax.", {"Pneumothorax": 0.0}),
    ],
    "edema": [
        ("no pulmonary edema.", {"Edema": 0.0}),
        ("there is no evidence of pulmonary edema.", {"Edema": 0.0}),
    ],
    "lesion": [
        ("no suspicious pulmonary nodules.", {"Lung Lesion": 0.0}),
        ("no pulmonary nodules or masses.", {"Lung Lesion": 0.0}),
    ],
    "fracture": [
        ("no displaced rib fractures.", {"Fracture": 0.0}),
        ("no acute fracture.", {"Fracture": 0.0}),
    ],
    # Common normal statements that state none of the 14 observations.
    "bones": [
        ("the osseous structures are intact.", {}),
        ("no acute bony abnormality.", {}),
        ("visualized osseous structures are unremarkable.", {}),
    ],
}

_NORMAL_IMPRESSION = [
    "no acute cardiopulmonary abnormality.",
    "no acute cardiopulmonary disease.",
    "no active disease.",
    "no acute cardiopulmonary process.",
]

_LUNG_FINDINGS = ("Consolidation", "Pneumonia", "Atelectasis", "Edema", "Lung Lesion")


def _key(f: Finding) -> str:
    if f.name == "Atelectasis":
        return f"Atelectasis/{f.zone}"
    if f.name == "Support Devices":
        return f"Support Devices/{f.kind}"
    return f.name


def _fmt(template: str, f: Finding) -> str:
    text = template.format(**_words(f))
    return _cap(" ".join(text.split()))


def _choose(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _positive(f: Finding, rng: np.random.Generator, hedge: bool, first: bool = False) -> tuple[str, Effects]:
    key = _key(f)
    if hedge and key in _HEDGED:
        template, extra = _HEDGED[key][0] if first else _choose(rng, _HEDGED[key])
        return _fmt(template, f), {f.name: -1.0, **extra}
    template = _POSITIVE[key][0] if first else _choose(rng, _POSITIVE[key])
    effects: Effects = {f.name: 1.0}
    if any(m in template for m in _MENTIONS_OPACITY):
        effects["Lung Opacity"] = 1.0
    return _fmt(template, f), effects


class _Sections:
    """The findings section being written: its sentences with their label effects, and the study's
    ``rng`` (every paraphrase and "mention this negative?" choice draws from it, in writing order)."""

    def __init__(self, findings: Sequence[Finding], rng: np.random.Generator, hedged: dict[int, bool]) -> None:
        self.findings, self.rng, self.hedged = findings, rng, hedged
        self.names = {f.name for f in findings}
        self.sentences: list[tuple[str, Effects]] = []

    def negative(self, group: str, p: float = 1.0) -> None:
        """State a negative of ``group`` (with probability ``p``)."""
        if p >= 1.0 or self.rng.random() < p:
            text, effects = _choose(self.rng, _NEGATIVE[group])
            self.sentences.append((_cap(text), dict(effects)))

    def positives(self, names: Sequence[str], hedge: bool = False) -> list[Finding]:
        """State every finding named in ``names`` (hedged ones as uncertain when ``hedge``)."""
        found = [f for f in self.findings if f.name in names]
        self.sentences.extend(_positive(f, self.rng, hedge and self.hedged[id(f)]) for f in found)
        return found

    def heart(self) -> None:
        heart_pos = [f for f in self.findings if f.name in ("Cardiomegaly", "Enlarged Cardiomediastinum")]
        if not heart_pos and self.rng.random() < 0.4:
            self.negative("heart+mediastinum")
            return
        if "Cardiomegaly" not in self.names:
            self.negative("heart")
        if "Enlarged Cardiomediastinum" not in self.names:
            self.negative("mediastinum", 0.7)
        self.positives(("Cardiomegaly", "Enlarged Cardiomediastinum"))

    def lungs(self) -> None:
        if not self.positives(_LUNG_FINDINGS, hedge=True):
            self.negative("lungs")
        if not self.names.intersection(("Consolidation", "Pneumonia")):
            self.negative("consolidation", 0.35)
        if "Edema" not in self.names:
            self.negative("edema", 0.25)
        if "Lung Lesion" not in self.names:
            self.negative("lesion", 0.2)

    def pleura(self) -> None:
        pleural_pos = self.positives(("Pleural Effusion", "Pneumothorax"))
        if not pleural_pos and self.rng.random() < 0.6:
            self.negative("pleural")
            return
        if "Pleural Effusion" not in self.names:
            self.negative("effusion", 0.85)
        if "Pneumothorax" not in self.names:
            self.negative("pneumothorax", 0.85)

    def bones(self) -> None:
        self.positives(("Fracture",))
        if "Fracture" not in self.names:
            self.negative("fracture", 0.3) if self.rng.random() < 0.5 else self.negative("bones", 0.5)

    def impression(self) -> list[tuple[str, Effects]]:
        """The main findings again (same certainty), or a normal statement."""
        pathology = [f for f in self.findings if f.name != "Support Devices"]
        if pathology:
            return [_positive(f, self.rng, self.hedged[id(f)], first=True) for f in pathology[:2]]
        return [(_cap(_choose(self.rng, _NORMAL_IMPRESSION)), {})]


def write_report(
    findings: Sequence[Finding],
    rng: np.random.Generator,
    hedge_prob: float = 0.1,
) -> SynthReport:
    """Write one report for ``findings``.

    Args:
        findings: what the image shows.
        rng: the study's report generator (paraphrase and hedging choices).
        hedge_prob: chance that a hedgeable finding is stated as uncertain.

    Returns:
        The report, with the labels its sentences state (after the hierarchy rules).
    """
    hedged = {id(f): (f.name in HEDGEABLE and rng.random() < hedge_prob) for f in findings}
    body = _Sections(findings, rng, hedged)
    # 1. devices; 2. heart and mediastinum; 3. lungs; 4. pleura; 5. bones; 6. impression
    body.positives(("Support Devices",))
    body.heart()
    body.lungs()
    body.pleura()
    body.bones()
    impression = body.impression()

    per_label: dict[str, list[float]] = {name: [] for name in CHEXPERT_LABELS}
    for _, effects in body.sentences + impression:
        for name, value in effects.items():
            per_label[name].append(value)
    labels = finalize_report_labels({name: merge_mentions(v) for name, v in per_label.items()})
    return SynthReport(
        findings=" ".join(s for s, _ in body.sentences),
        impression=" ".join(s for s, _ in impression),
        labels=labels,
        sentences=body.sentences + impression,
    )
