"""Rule-based report labeler: the 14 CheXpert observations plus severity and location.

In the spirit of the CheXpert labeler (mention extraction, then negation and uncertainty
classification), with our own rules and no weights:

1. The report is lower-cased and split into sentences, each sentence into clauses at scope
   breakers ("but", "however", "which", ", there ...", ";").
2. Each observation has mention patterns. A mention is *negative* when a negation cue
   ("no", "without", "free of", "no evidence of", ...) precedes it in its clause or a post-negation
   follows it ("... is not seen", "... has resolved"); *uncertain* when an uncertainty cue
   ("may", "possible", "likely", "cannot exclude", "versus", ...) precedes it or follows it
   ("... is not excluded"); otherwise *positive*. Some patterns state a normal finding outright
   ("heart size is normal") and are negative mentions of that observation.
3. Mentions of one observation combine as positive > uncertain > negative > not mentioned, then
   the CheXpert hierarchy lifts "Lung Opacity" from its children and "No Finding" is set when no
   pathology is positive or uncertain (:func:`shared.labels.finalize_report_labels`).

For each positive or uncertain mention, the clause is searched for a severity
(trace/small/mild/moderate/large/severe) and a location (laterality left/right/bilateral, and
zone words such as upper/middle/lower, base, apex, retrocardiac, perihilar, lingula).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..labels import CHEXPERT_LABELS, finalize_report_labels, merge_mentions

logger = logging.getLogger(__name__)

__all__ = ["ReportLabeler", "LabelResult", "Mention", "FindingAttributes", "merge_attributes", "LLMAttributeExtractor",
           "SEVERITIES", "LATERALITIES", "ZONES"]

SEVERITIES = ("trace", "small", "mild", "moderate", "large", "severe")
LATERALITIES = ("left", "right", "bilateral")
ZONES = ("upper", "middle", "lower", "base", "apex", "retrocardiac", "perihilar", "lingula", "hilar")

_SEVERITY_WORDS = {
    "trace": "trace", "tiny": "small", "small": "small", "minimal": "mild", "minimally": "mild",
    "mild": "mild", "mildly": "mild", "slight": "mild", "slightly": "mild", "moderate": "moderate",
    "moderately": "moderate", "large": "large", "massive": "large", "severe": "severe",
    "severely": "severe", "marked": "severe", "markedly": "severe",
}
_ZONE_WORDS = {
    "upper": "upper", "apex": "apex", "apical": "apex", "apices": "apex", "middle": "middle", "mid": "middle",
    "lower": "lower", "base": "base", "bases": "base", "basilar": "base", "basal": "base", "bibasilar": "base",
    "retrocardiac": "retrocardiac", "perihilar": "perihilar", "lingula": "lingula", "lingular": "lingula",
    "hilar": "hilar",
}


def _rx(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns))


# Mention patterns per observation (positive unless a cue says otherwise).
_MENTIONS: dict[str, re.Pattern[str]] = {
    "Enlarged Cardiomediastinum": _rx(
        r"\bwiden(?:ed|ing)\b[^.;]*\bmediastin\w*",
        r"\bmediastin\w*\b(?: contours?| silhouette)?(?: is| are| appears?)?(?: \w+ly)? widen(?:ed|ing)\b",
        r"\bcardiomediastinal silhouette (?:is |are |appears )?(?:\w+ly )?(?:enlarged|widened|prominent)\b",
        r"\benlarge(?:d|ment of the) cardiomediastinal silhouette\b",
        r"\bmediastinal (?:widening|enlargement)\b",
    ),
    "Cardiomegaly": _rx(
        r"\bcardiomegaly\b",
        r"\bheart (?:size )?(?:is |appears |remains )?(?:\w+ly |at least )?(?:enlarged|increased|large)\b",
        r"\benlarge(?:d|ment of the) (?:cardiac silhouette|heart|cardiac shadow)\b",
        r"\bcardiac (?:silhouette |shadow )?(?:is |appears |remains )?(?:\w+ly )?enlarge(?:d|ment)\b",
        r"\benlarged heart\b",
        r"\bcardiac enlargement\b",
    ),
    "Lung Opacity": _rx(
        r"\bopaci(?:ty|ties|fication|fied)\b",
        r"\bairspace (?:disease|process|opacit\w*)\b",
        r"\binfiltrat\w*\b",
        r"\bdensit(?:y|ies)\b",
    ),
    "Lung Lesion": _rx(
        # Nodules and masses; calcified nodules are granulomas and "nodular density/opacity" an opacity.
        r"(?<!calcified )\b(?:fibro|reticulo)?nodul(?:es?|ar)\b(?! (?:densit|opacit|like opacit))",
        r"\bmass(?:es)?\b", r"\b(?:pulmonary|lung) lesions?\b", r"\bneoplasm\b", r"\btumou?r\b",
    ),
    "Edema": _rx(r"\bedema\b", r"\bchf\b", r"\bcongestive heart failure\b", r"\bheart failure\b",
                 r"\bfluid overload\b"),
    "Consolidation": _rx(r"\bconsolidat\w*\b"),
    "Pneumonia": _rx(r"\bpneumoni\w*\b",
                     r"(?<!granulomatous )(?<!prior )(?<!old )(?<!tuberculosis )(?<!tuberculous )\binfectio(?:n|us)\b"),
    "Atelectasis": _rx(r"\batelecta\w*\b", r"\b(?:lobar|lung|lobe) collapse\b", r"\bcollapse of the\b"),
    "Pneumothorax": _rx(r"\bpneumothora(?:x|ces)\b", r"\bhydropneumothorax\b", r"\bhemopneumothorax\b"),
    "Pleural Effusion": _rx(r"(?<!pericardial )\beffusions?\b", r"\bpleural fluid\b", r"\bhydrothorax\b"),
    "Pleural Other": _rx(r"\bpleural (?:thickening|plaques?|scarring)\b", r"\bfibrothorax\b",
                         r"\bpleural calcification\b"),
    "Fracture": _rx(r"\bfractur\w*\b"),
    "Support Devices": _rx(
        r"\b(?:endotracheal|et|nasogastric|ng|feeding|chest|enteric|tracheostomy|gastric|dobhoff) tubes?\b",
        r"\bcatheters?\b", r"\bpiccs?\b", r"\b(?:central|venous|arterial|midline|port) (?:line|catheter)s?\b",
        r"\bcentral lines?\b", r"\bpacemaker\b", r"\bpacer\b", r"\bdefibrillator\b", r"\baicd\b", r"\bicd\b",
        r"\bleads?\b", r"\bport-?a-?cath\b", r"\b(?:support|medical|monitoring) devices?\b",
        r"\bswan-?ganz\b", r"\bmonitor(?:ing)? (?:leads|wires|device)\b", r"\bstimulator\b",
        r"\bprosthetic (?:\w+ )?valve\b", r"\bvalve (?:replacement|prosthesis)\b",
        # a bare "tube(s)" is a device in a chest film report ("no tube", "tube removed"), and so are
        # "lines" when they stand with tubes ("no lines or tubes", "tubes and lines removed")
        r"\btubes?\b", r"\blines? (?:and|or|and/or) tubes?\b", r"\btubes? (?:and|or|and/or) lines?\b",
        # any "device" on a chest film ("dual-XXXX cardiac XXXX device", "closure device", "electronic
        # device"), and shunt catheters (a bare "shunt" is also physiology: "left-to-right shunt")
        r"\bdevices?\b", r"\b(?:vp|ventriculoperitoneal) shunt\b", r"\bshunt (?:tubing|catheter)s?\b",
        # IU X-ray anonymisation often hides the device word: "left chest XXXX with tip in the SVC".
        r"\btips? (?:project\w*|in|at|overl\w*|terminat\w*|is|are|near|within|in the)\b",
    ),
}

# Statements of normality: negative mentions regardless of cues.
_NORMAL: dict[str, re.Pattern[str]] = {
    "Cardiomegaly": _rx(
        r"\bheart (?:size )?(?:is |appears |remains )?(?:normal|within normal limits|upper limits of normal|top normal|stable|unremarkable|not enlarged)\b",  # noqa: E501  (a regex reads best whole)
        r"\bheart is normal in size\b",
        r"\bnormal (?:heart|cardiac) (?:size|silhouette)\b",
        r"\bheart size and (?:mediastinal|cardiomediastinal|pulmonary vascularity|hilar)[\w ]*? (?:are |is )?(?:normal|within normal limits|unremarkable|stable)\b",  # noqa: E501  (a regex reads best whole)
        r"\bnormal heart size\b",
        r"\bcardiomediastinal (?:silhouette|contours?)[\w ,]*? (?:is |are |appears |remains )?(?:normal|within normal limits|unremarkable|stable)\b",  # noqa: E501  (a regex reads best whole)
        r"\bnormal cardiomediastinal (?:silhouette|contours?)\b",
        r"\bcardiac (?:silhouette|size|contours?)[\w ,]*? (?:is |are |appears |remains )?(?:normal|within normal limits|unremarkable|stable)\b",  # noqa: E501  (a regex reads best whole)
        r"\bnormal (?:size|sized) (?:heart|cardiac silhouette)\b",
    ),
    "Enlarged Cardiomediastinum": _rx(
        r"\bmediastin(?:um|al contours?|al silhouette)[\w ,]*? (?:is |are |appears |remains )?(?:normal|within normal limits|unremarkable|stable|midline)\b",  # noqa: E501  (a regex reads best whole)
        r"\bnormal (?:mediastinal|cardiomediastinal) (?:contours?|silhouette)\b",
        r"\bheart size and mediastinal contours (?:are )?(?:normal|within normal limits)\b",
        r"\bcardiomediastinal (?:silhouette|contours?)[\w ,]*? (?:is |are |appears |remains )?(?:normal|within normal limits|unremarkable|stable)\b",  # noqa: E501  (a regex reads best whole)
        r"\bnormal heart size and mediastinal contours\b",
    ),
    "Lung Opacity": _rx(
        r"\blungs? (?:are |is |appear |remain )?(?:otherwise )?clear\b",
        r"\bclear lungs\b",
    ),
}

_NEG_PRE = _rx(
    r"\bno\b(?! (?:change|significant change|interval change|increase|decrease|longer)\b)",
    r"\bnot\b", r"\bwithout\b", r"\bnegative for\b", r"\bfree of\b", r"\babsence of\b", r"\babsent\b",
    r"\bclear of\b", r"\bnor\b", r"\bneither\b", r"\bresolution of\b", r"\bresolved\b", r"\bremoval of\b",
    r"\bdenies\b", r"\bno longer\b",
)
_NEG_POST = _rx(
    r"^[\w ,]*?\b(?:is|are|was|were|has been|have been)? ?(?:not (?:seen|identified|present|visualized|demonstrated|appreciated|evident|detected|noted)|absent|resolved|no longer (?:seen|present|visualized))\b",  # noqa: E501  (a regex reads best whole)
    r"^[\w ,]*?\bhas resolved\b", r"^[\w ,]*?\bhave resolved\b",
    r"^[\w ,]*?\b(?:has|have) been removed\b", r"^[\w ,]*?\b(?:is|are|was|were) removed\b",
    # "tube removed", "tubes and lines removed": the mention, at most "and/or <word>", then removed
    r"^\s*(?:(?:and|or) \w+ )?(?:removed|withdrawn)\b",
)
_UNC_PRE = _rx(
    r"\bmay\b", r"\bmight\b", r"\bcould\b", r"\bpossibl[ey]\b", r"\bprobabl[ey]\b", r"\blikely\b",
    r"\bsuggest\w*\b", r"\bsuspect\w*\b", r"\bsuspicious\b", r"\bconcern\w*\b", r"\bquestion\w*\b",
    r"\bcannot (?:be )?(?:exclude|excluded|rule out|ruled out)\b", r"\bcan not (?:be )?exclude\w*\b",
    r"\bdifferential\b", r"\bconsider\w*\b", r"\bversus\b", r"\bvs\b", r"\bequivocal\b", r"\bindeterminate\b",
    r"\bborderline\b", r"\buncertain\b", r"\bpresum\w*\b", r"\bpotential\w*\b", r"\bcannot rule out\b",
    r"\brule out\b", r"\br/o\b", r"\bevaluat\w* (?:for|of)\b", r"\bnot exclude\w*\b", r"\bmay represent\b",
    r"\bworrisome\b", r"\bcorrelat\w* (?:clinically )?(?:for|as to|with)\b", r"\bclinical setting\b",
    r"\bdifficult to (?:completely |entirely )?exclude\b",
)
_UNC_STRONG_PRE = _rx(
    r"\b(?:cannot|can not|could not|not) (?:be )?(?:exclude|excluded|rule out|ruled out)\b",
    r"\brule out\b", r"\br/o\b",
)
_UNC_STRONG_POST = _rx(
    r"^[\w ,]*?\b(?:is |are )?(?:not (?:entirely |completely )?excluded|(?:cannot|can not) be (?:entirely |completely )?excluded|not ruled out|cannot be ruled out)\b",  # noqa: E501  (a regex reads best whole)
)
_UNC_POST = _rx(
    r"^\s*(?:versus|vs|or)\b",
    r"^[\w ,]*?\b(?:is|are) (?:also )?(?:possible|likely|suspected|questioned|not excluded)\b",
    r"^\s*\?",
    r"^[\w ,]*?\b(?:is|are) in the differential\b", r"^[\w ,]*?\b(?:would be|is) (?:a|another) consideration\b",
)
# Words that end a cue's scope inside a sentence.
_BREAKERS = re.compile(
    r"\s*;\s*|\s*\bbut\b\s*|\s*\bhowever\b\s*|\s*\balthough\b\s*|\s*\bthough\b\s*|\s*\bexcept\b\s*|"
    r"\s*\bwhich\b\s*|\s*\bwhereas\b\s*|\s*\bapart from\b\s*|\s*\baside from\b\s*|"
    r",\s*(?=(?:there|the|a|an|this|these|it|with|and there|otherwise)\b)|"
    r"\s+\band\b\s+(?=(?:there|the|a|an)\b)"
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+|(?<=\.)(?=[a-z])")


@dataclass
class FindingAttributes:
    """Severity and location of one positive or uncertain finding mention."""

    name: str
    severity: str | None = None
    laterality: str | None = None
    zones: list[str] = field(default_factory=list)
    status: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Mention:
    """One mention: observation, value (1, 0 or -1), the matched text and its clause."""

    label: str
    value: float
    text: str
    clause: str


@dataclass
class LabelResult:
    """Labels (CheXpert order, NaN = not mentioned), the mentions found and per-finding attributes."""

    labels: dict[str, float]
    mentions: list[Mention]
    attributes: list[FindingAttributes]

    def vector(self) -> np.ndarray:
        return np.array([self.labels[name] for name in CHEXPERT_LABELS], dtype=np.float32)


def _normalise(text: str) -> str:
    text = text.lower().replace("x-ray", "xray").replace("\u2019", "'")
    text = re.sub(r"\b(\d+)\.(\d+)", r"\1,\2", text)  # keep decimals from splitting sentences
    return re.sub(r"[ \t]+", " ", text)


def _clauses(report: str) -> list[tuple[str, str]]:
    """(clause, its sentence) pairs."""
    out = []
    for sentence in _SENTENCE.split(_normalise(report)):
        sentence = sentence.strip().strip(".")
        if sentence:
            out.extend((c.strip(), sentence) for c in _BREAKERS.split(sentence) if c and c.strip())
    return out


def _attribute_words(text: str) -> tuple[str | None, str | None, list[str]]:
    words = re.findall(r"[a-z]+", text)
    severity = next((_SEVERITY_WORDS[w] for w in words if w in _SEVERITY_WORDS), None)
    sides = {w for w in words if w in ("left", "right")}
    if not sides and ("lingula" in words or "lingular" in words):
        sides = {"left"}  # the lingula is part of the left lung
    if "bilateral" in words or "bilaterally" in words or "bibasilar" in words or "both" in words or len(sides) == 2:
        laterality = "bilateral"
    else:
        laterality = next(iter(sides)) if sides else None
    zones: list[str] = []
    for w in words:
        zone = _ZONE_WORDS.get(w)
        if zone and zone not in zones:
            zones.append(zone)
    return severity, laterality, zones


def _attributes(name: str, clause: str, sentence: str, value: float) -> FindingAttributes:
    """Severity and location words of the clause; what the clause lacks is looked up in its sentence."""
    severity, laterality, zones = _attribute_words(clause)
    if severity is None or laterality is None or not zones:
        wide_severity, wide_laterality, wide_zones = _attribute_words(sentence)
        severity, laterality, zones = severity or wide_severity, laterality or wide_laterality, zones or wide_zones
    return FindingAttributes(name, severity, laterality, list(zones), value)


class ReportLabeler:
    """Label reports with the 14 CheXpert observations and the attributes of positive findings.

    ``labeler(report)`` returns the label dict; :meth:`label` also gives mentions and attributes;
    :meth:`label_batch` an ``(N, 14)`` array in :data:`CHEXPERT_LABELS` order.
    """

    labels = CHEXPERT_LABELS

    def _classify(self, clause: str, start: int, end: int) -> float:
        before, after = clause[:start], clause[end:]
        # "cannot exclude X", "X is not excluded": uncertainty wins over the "not" inside it.
        if _UNC_STRONG_PRE.search(before) or _UNC_STRONG_POST.search(after):
            return -1.0
        if _NEG_PRE.search(before) or _NEG_POST.search(after):
            return 0.0
        # "X or Y" is uncertain only outside a negation ("no X or Y" is two negatives).
        if _UNC_PRE.search(before) or _UNC_POST.search(after):
            return -1.0
        return 1.0

    def label(self, report: str, attributes: bool = True) -> LabelResult:
        """Labels, mentions and (unless ``attributes`` is false: a faster reading) per-finding attributes."""
        mentions: list[Mention] = []
        found: list[FindingAttributes] = []
        for clause, sentence in _clauses(report or ""):
            normal_spans: list[tuple[int, int]] = []
            for name, pattern in _NORMAL.items():
                for m in pattern.finditer(clause):
                    mentions.append(Mention(name, 0.0, m.group(0), clause))
                    normal_spans.append(m.span())
            for name, pattern in _MENTIONS.items():
                for m in pattern.finditer(clause):
                    if name in _NORMAL and any(a <= m.start() < b for a, b in normal_spans):
                        continue
                    value = self._classify(clause, m.start(), m.end())
                    mentions.append(Mention(name, value, m.group(0), clause))
                    if value != 0.0 and attributes:
                        found.append(_attributes(name, clause, sentence, value))
        per_label: dict[str, list[float]] = {}
        for m in mentions:
            per_label.setdefault(m.label, []).append(m.value)
        labels = finalize_report_labels({k: merge_mentions(v) for k, v in per_label.items()})
        return LabelResult(labels, mentions, found)

    def __call__(self, report: str) -> dict[str, float]:
        return self.label(report).labels

    def label_batch(self, reports: Iterable[str]) -> np.ndarray:
        """(N, 14) float32 array: 1, 0, -1, NaN."""
        rows = [self.label(r).vector() for r in reports]
        return np.stack(rows) if rows else np.zeros((0, len(CHEXPERT_LABELS)), dtype=np.float32)

    def sentence_readings(self, report: str) -> list[tuple[str, dict[str, float]]]:
        """Each sentence of ``report`` with what it says: ``[(sentence, {observation: value})]``.

        A sentence's value of an observation merges its own mentions (positive > uncertain > negative);
        the report-level rules (the "Lung Opacity" hierarchy, "No Finding") are not applied, so a
        sentence says only what it words. Sentences are split as :meth:`label` splits them.
        """
        out = []
        for sentence in _SENTENCE.split(_normalise(report or "")):
            sentence = sentence.strip().strip(".").strip()
            if not sentence:
                continue
            per_label: dict[str, list[float]] = {}
            for m in self.label(sentence, attributes=False).mentions:
                per_label.setdefault(m.label, []).append(m.value)
            out.append((sentence, {k: merge_mentions(v) for k, v in per_label.items()}))
        return out

    def finding_attributes(self, report: str) -> dict[str, FindingAttributes]:
        """The merged attributes of each positive/uncertain finding (first non-empty value wins)."""
        return merge_attributes(self.label(report).attributes)


def merge_attributes(attributes: Iterable[FindingAttributes]) -> dict[str, FindingAttributes]:
    """:meth:`ReportLabeler.finding_attributes` of an already labelled report (its ``LabelResult.attributes``):
    one entry per finding, the first non-empty value of each attribute, sides of two mentions made bilateral."""
    merged: dict[str, FindingAttributes] = {}
    for a in attributes:
        if a.name not in merged:
            merged[a.name] = FindingAttributes(a.name, a.severity, a.laterality, list(a.zones), a.status)
            continue
        m = merged[a.name]
        m.severity = m.severity or a.severity
        if a.laterality and m.laterality and a.laterality != m.laterality:
            m.laterality = "bilateral"
        m.laterality = m.laterality or a.laterality
        m.zones += [z for z in a.zones if z not in m.zones]
        m.status = merge_mentions([m.status, a.status])
    return merged


_LLM_PROMPT = (
    "Extract every finding stated in the chest X-ray report as JSON: a list of objects with keys "
    '"name" (one of {names}), "status" (1 present, -1 uncertain), "severity" (one of {severities} or null), '
    '"laterality" (one of {lateralities} or null), "zones" (a list from {zones}).\nReport: {report}\nJSON:'
)


class LLMAttributeExtractor:
    """Attribute extraction with a local transformers causal LM, falling back to the rules.

    The causal-disentanglement paper parses reports with an LLM; this runs any local model
    folder (``model_path``; nothing is downloaded) with a JSON prompt, validates the answer
    against the schema and, on any failure (no JSON, wrong keys, unknown values), returns the
    rule-based attributes of :class:`ReportLabeler` for that report and counts the fallback.
    """

    def __init__(self, model_path: str, max_new_tokens: int = 256, device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True).to(device).eval()
        self.max_new_tokens = int(max_new_tokens)
        self.device = device
        self.rules = ReportLabeler()
        self.fallbacks = 0
        self.calls = 0

    def prompt(self, report: str) -> str:
        return _LLM_PROMPT.format(names=list(CHEXPERT_LABELS[1:]), severities=list(SEVERITIES),
                                  lateralities=list(LATERALITIES), zones=list(ZONES), report=report)

    @staticmethod
    def parse(answer: str) -> list[FindingAttributes]:
        """Validate the model's JSON answer; raises ValueError naming what is wrong."""
        start, end = answer.find("["), answer.rfind("]")
        if start < 0 or end <= start:
            raise ValueError("no JSON list in the answer")
        try:
            items = json.loads(answer[start : end + 1])
        except json.JSONDecodeError as err:
            raise ValueError(f"invalid JSON: {err.msg}") from None
        out = []
        for item in items:
            if not isinstance(item, dict) or set(item) - {"name", "status", "severity", "laterality", "zones"}:
                raise ValueError(f"unexpected item {item!r}")
            name, status = item.get("name"), item.get("status", 1)
            if name not in CHEXPERT_LABELS[1:] or status not in (1, -1):
                raise ValueError(f"bad name/status in {item!r}")
            sev, lat, zones = item.get("severity"), item.get("laterality"), item.get("zones") or []
            if (sev is not None and sev not in SEVERITIES) or (lat is not None and lat not in LATERALITIES):
                raise ValueError(f"bad severity/laterality in {item!r}")
            if not isinstance(zones, list) or any(z not in ZONES for z in zones):
                raise ValueError(f"bad zones in {item!r}")
            out.append(FindingAttributes(name, sev, lat, list(zones), float(status)))
        return out

    def __call__(self, report: str) -> list[FindingAttributes]:
        import torch

        self.calls += 1
        inputs = self.tokenizer(self.prompt(report), return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        answer = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        try:
            return self.parse(answer)
        except ValueError as err:
            self.fallbacks += 1
            logger.debug("LLM answer rejected (%s); using the rule-based attributes", err)
            return list(self.rules.finding_attributes(report).values())
