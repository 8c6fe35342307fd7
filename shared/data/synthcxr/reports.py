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

from ...labels import CHEXPERT_LABELS, finalize_report_labels, merge_mentions
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
        ("the heart size and mediastinal contours are normal.", {"Cardiomegaly": 0.0, "Enlarged Cardiomediastinum": 0.0}),
        ("heart size and mediastinal contours are within normal limits.", {"Cardiomegaly": 0.0, "Enlarged Cardiomediastinum": 0.0}),
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
    names = {f.name for f in findings}
    hedged = {id(f): (f.name in HEDGEABLE and rng.random() < hedge_prob) for f in findings}
    sentences: list[tuple[str, Effects]] = []

    def neg(group: str, p: float = 1.0) -> None:
        if p >= 1.0 or rng.random() < p:
            text, effects = _choose(rng, _NEGATIVE[group])
            sentences.append((_cap(text), dict(effects)))

    for f in findings:
        if f.name == "Support Devices":
            sentences.append(_positive(f, rng, False))
    # 1. Heart and mediastinum.
    heart_pos = [f for f in findings if f.name in ("Cardiomegaly", "Enlarged Cardiomediastinum")]
    if not heart_pos and rng.random() < 0.4:
        neg("heart+mediastinum")
    else:
        if "Cardiomegaly" not in names:
            neg("heart")
        if "Enlarged Cardiomediastinum" not in names:
            neg("mediastinum", 0.7)
        sentences.extend(_positive(f, rng, False) for f in heart_pos)
    # 2. Lungs.
    lung_pos = [f for f in findings if f.name in _LUNG_FINDINGS]
    sentences.extend(_positive(f, rng, hedged[id(f)]) for f in lung_pos)
    if not lung_pos:
        neg("lungs")
    if not names.intersection(("Consolidation", "Pneumonia")):
        neg("consolidation", 0.35)
    if "Edema" not in names:
        neg("edema", 0.25)
    if "Lung Lesion" not in names:
        neg("lesion", 0.2)
    # 3. Pleura.
    pleural_pos = [f for f in findings if f.name in ("Pleural Effusion", "Pneumothorax")]
    sentences.extend(_positive(f, rng, False) for f in pleural_pos)
    if not pleural_pos and rng.random() < 0.6:
        neg("pleural")
    else:
        if "Pleural Effusion" not in names:
            neg("effusion", 0.85)
        if "Pneumothorax" not in names:
            neg("pneumothorax", 0.85)
    # 4. Bones.
    sentences.extend(_positive(f, rng, False) for f in findings if f.name == "Fracture")
    if "Fracture" not in names:
        neg("fracture", 0.3) if rng.random() < 0.5 else neg("bones", 0.5)

    # 5. Impression: the main findings again (same certainty), or a normal statement.
    pathology = [f for f in findings if f.name != "Support Devices"]
    impression: list[tuple[str, Effects]] = []
    if pathology:
        impression = [_positive(f, rng, hedged[id(f)], first=True) for f in pathology[:2]]
    else:
        impression = [(_cap(_choose(rng, _NORMAL_IMPRESSION)), {})]

    per_label: dict[str, list[float]] = {name: [] for name in CHEXPERT_LABELS}
    for _, effects in sentences + impression:
        for name, value in effects.items():
            per_label[name].append(value)
    labels = finalize_report_labels({name: merge_mentions(v) for name, v in per_label.items()})
    return SynthReport(
        findings=" ".join(s for s, _ in sentences),
        impression=" ".join(s for s, _ in impression),
        labels=labels,
        sentences=sentences + impression,
    )
