"""Would a radiologist sign it? Report-quality metrics that CE and NLG scores do not see.

A report can name the right findings (high CE) and still be unsignable. Each report is read sentence by
sentence with the rule-based labeler (:meth:`shared.text.labeler.ReportLabeler.sentence_readings`):

* **self-contradiction**: one observation affirmed (1) in one sentence and negated (0) in another
  ("the heart is normal in size . ... moderate cardiomegaly ."). Each sentence's reading is lifted by the
  CheXpert hierarchy first, so "the lungs are clear ." (no lung opacity) is contradicted by a later
  "mild left retrocardiac atelectasis ." (a lung opacity). Uncertain mentions contradict nothing.
* **restatement**: a sentence that says nothing new: every observation it mentions was already said with
  the same value by an earlier sentence ("no pneumothorax . ... no pneumothorax or pneumothorax ."), or
  it repeats an earlier sentence word for word.
* **unfinished**: the report does not end with a sentence end (``.``, ``!``, ``?``): decoding stopped at
  its length limit or emitted ``<eos>`` inside a sentence. An empty report is unfinished.
* **repeated sentences**: sentences that repeat an earlier sentence of the same report word for word
  (:func:`evaluation.diversity.diversity_scores` ``repeated_sentence_rate``, counted over sentences).
* **novel sentences** (template-worded data such as SynthCXR only): the share of generated sentences that
  occur in no training report, after R2Gen cleaning: a proxy for broken grammar
  ("there size is a moderate left evidence of pneumothorax").

:func:`sentence_conflict` is the one definition of a contradicting / restating sentence; label-consistent
decoding (:mod:`image2report.decoding`) refuses sentences with it, so the metric and the decoding agree.

Blind spots (docs/metrics.md): everything the labeler misreads (a negation it does not know, an observation
worded outside its patterns) is missed both ways; a contradiction within one sentence is not counted, nor
an uncertain mention against a negated one ("no pneumonia . ... possible pneumonia"); a report cut exactly
after a period by the length limit counts as finished; on real (free-worded) reports nearly every sentence is
novel, so that rate means something only on template-worded data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..labels import LUNG_OPACITY_CHILDREN, merge_mentions
from ..text.tokenizer import clean_report

__all__ = ["sentence_conflict", "contradicted", "lift_opacity", "said_values", "ReportQuality", "report_quality",
           "report_quality_scores", "sentence_set", "CONTRADICTION", "RESTATEMENT"]

CONTRADICTION, RESTATEMENT = "contradiction", "restatement"
AFFIRMED, NEGATED, UNCERTAIN = 1.0, 0.0, -1.0


def lift_opacity(reading: Mapping[str, float]) -> dict[str, float]:
    """A sentence's reading with "Lung Opacity" lifted by its children (CheXpert's hierarchy, as
    :func:`shared.labels.finalize_report_labels` lifts a report's): an atelectasis is a lung opacity."""
    out = dict(reading)
    children = [reading[c] for c in LUNG_OPACITY_CHILDREN if reading.get(c) in (AFFIRMED, UNCERTAIN)]
    if children:
        out["Lung Opacity"] = merge_mentions([reading.get("Lung Opacity"), *children])
    return out


def said_values(readings: Iterable[Mapping[str, float]]) -> dict[str, set[float]]:
    """Every value each observation was given by ``readings`` (lifted by the hierarchy)."""
    said: dict[str, set[float]] = {}
    for values in readings:
        for name, value in lift_opacity(values).items():
            said.setdefault(name, set()).add(value)
    return said


def contradicted(said: Mapping[str, set[float]], reading: Mapping[str, float]) -> list[str]:
    """The observations that ``reading`` affirms where ``said`` (:func:`said_values` of the earlier sentences)
    holds a negation, or negates where it holds an affirmation."""
    return [name for name, value in lift_opacity(reading).items()
            if value in (AFFIRMED, NEGATED) and (1.0 - value) in said.get(name, ())]


def sentence_conflict(said: Mapping[str, set[float]], repeated: bool, reading: Mapping[str, float]) -> str | None:
    """How a new sentence clashes with the earlier sentences of its report, or None.

    Args:
        said: :func:`said_values` of the earlier sentences' readings.
        repeated: the sentence repeats an earlier one word for word.
        reading: its ``{observation: value}`` (labeler values 1 / 0 / -1).

    Returns:
        :data:`CONTRADICTION` when an observation it affirms was negated before or one it negates was
        affirmed before; :data:`RESTATEMENT` when it repeats an earlier sentence or every observation it
        mentions was already said with the same value; else None.
    """
    if contradicted(said, reading):
        return CONTRADICTION
    if repeated or (reading and all(value in said.get(name, ()) for name, value in lift_opacity(reading).items())):
        return RESTATEMENT
    return None


@dataclass
class ReportQuality:
    """What one report gets wrong; ``contradicting`` names the observations said both ways."""

    sentences: int
    contradicting: list[str] = field(default_factory=list)
    restatements: int = 0
    repeated: int = 0
    unfinished: bool = False
    novel: int = 0
    #: its R2Gen-cleaned sentences (the novel-sentence rate's denominator; counted with ``known_sentences``)
    cleaned: int = 0

    @property
    def contradicts_itself(self) -> bool:
        return bool(self.contradicting)


def sentence_set(reports: Iterable[str], clean: str = "iu_xray") -> set[str]:
    """The distinct sentences of ``reports`` after R2Gen cleaning (the reference of the novel-sentence rate)."""
    out: set[str] = set()
    for report in reports:
        out.update(_clean_sentences(report, clean))
    return out


def _clean_sentences(report: str, clean: str) -> list[str]:
    return [s.strip(" .") for s in clean_report(report, clean).split(" . ") if s.strip(" .")]


def report_quality(report: str, labeler: Any, known_sentences: set[str] | None = None,
                   clean: str = "iu_xray") -> ReportQuality:
    """Read one report; ``labeler`` has ``sentence_readings``; ``known_sentences`` (cleaned training sentences)
    turns on the novel-sentence count."""
    readings = labeler.sentence_readings(report)
    quality = ReportQuality(sentences=len(readings), unfinished=not report.strip() or report.rstrip()[-1] not in ".!?")
    for k, (sentence, reading) in enumerate(readings):
        said = said_values(r for _, r in readings[:k])
        repeated = any(sentence == text for text, _ in readings[:k])
        quality.repeated += repeated
        quality.contradicting += [n for n in contradicted(said, reading) if n not in quality.contradicting]
        quality.restatements += sentence_conflict(said, repeated, reading) == RESTATEMENT
    if known_sentences is not None:
        cleaned = _clean_sentences(report, clean)
        quality.novel, quality.cleaned = sum(s not in known_sentences for s in cleaned), len(cleaned)
    return quality


def report_quality_scores(reports: Sequence[str], labeler: Any | None = None,
                          training_reports: Iterable[str] | None = None, clean: str = "iu_xray",
                          known_sentences: set[str] | None = None) -> dict[str, float]:
    """Rates over a set of reports; ``known_sentences`` (a :func:`sentence_set`) stands for ``training_reports``
    when many report sets are scored against the same training reports.

    Returns:
        ``self_contradiction_rate`` (reports that contradict themselves), ``restatement_rate`` (reports with a
        restating sentence), ``unfinished_rate`` (reports), ``repeated_sentence_report_rate`` (reports with a
        sentence repeated word for word) and, when ``training_reports`` are given, ``novel_sentence_rate``
        (generated sentences found in no training report, over all generated sentences).
    """
    if not reports:
        raise ValueError("no reports")
    if labeler is None:
        from ..text.labeler import ReportLabeler

        labeler = ReportLabeler()
    known = known_sentences
    if known is None and training_reports is not None:
        known = sentence_set(training_reports, clean)
    rows = [report_quality(r, labeler, known, clean) for r in reports]
    n = len(rows)
    out = {
        "self_contradiction_rate": sum(q.contradicts_itself for q in rows) / n,
        "restatement_rate": sum(q.restatements > 0 for q in rows) / n,
        "unfinished_rate": sum(q.unfinished for q in rows) / n,
        "repeated_sentence_report_rate": sum(q.repeated > 0 for q in rows) / n,
    }
    if known is not None:
        total = sum(q.cleaned for q in rows)
        out["novel_sentence_rate"] = sum(q.novel for q in rows) / total if total else 0.0
    return out
