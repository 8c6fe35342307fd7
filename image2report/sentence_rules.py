"""Sentence-level rules of report decoding: what a finished sentence may not do.

Decoding calls :meth:`SentenceRules.check` each time a hypothesis ends a sentence (emits ``.``). A
sentence is refused when it

* occurs more often in the report than ``max_sentence_repeats`` allows (a sentence-level repetition
  control, in place of or beside the n-gram block, which forbids the legitimate repeats of a report
  whose impression restates its findings and so forces odd continuations);
* contradicts an earlier sentence (``label_consistent``: the labeler reads each sentence; an observation
  affirmed in one and negated in the other, :func:`shared.metrics.report_quality.contradicted`);
* restates earlier sentences (``refuse_restatements``: it says nothing new).

The answer says where the trouble started: the position of the word that named the contradicted
observation (or the sentence's first word), so greedy decoding can back up there and ban that word.
Readings are cached per sentence (token ids), so a beam re-checking the same sentence costs a lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.metrics.report_quality import (
    CONTRADICTION,
    RESTATEMENT,
    contradicted,
    lift_opacity,
    said_values,
    sentence_conflict,
)

__all__ = ["SentenceRules", "Refusal", "REPEAT"]

REPEAT = "repeat"
_CACHE_LIMIT = 200_000


@dataclass(frozen=True)
class Refusal:
    """Why a sentence is refused and the index (into the hypothesis' tokens) of the word to ban there."""

    reason: str
    position: int


class SentenceRules:
    """Checks finished sentences of token hypotheses against the sentences before them.

    Args:
        itos: the tokenizer's vocabulary (id -> word).
        period_id: the id of the sentence end ``.``.
        max_sentence_repeats: how often one sentence may occur in a report (0: no limit).
        label_consistent: refuse contradicting sentences.
        refuse_restatements: refuse sentences that say nothing new.
        labeler: anything with ``sentence_readings(text)``; the rule-based labeler by default.
    """

    def __init__(self, itos: Sequence[str], period_id: int, max_sentence_repeats: int = 2,
                 label_consistent: bool = True, refuse_restatements: bool = False, labeler: Any | None = None) -> None:
        if labeler is None:
            from shared.text.labeler import ReportLabeler

            labeler = ReportLabeler()
        self.itos, self.period_id, self.labeler = list(itos), int(period_id), labeler
        self.max_sentence_repeats = int(max_sentence_repeats)
        self.label_consistent, self.refuse_restatements = bool(label_consistent), bool(refuse_restatements)
        self._readings: dict[tuple[int, ...], dict[str, float]] = {}
        self._verdicts: dict[tuple, Refusal | None] = {}

    @property
    def active(self) -> bool:
        return self.max_sentence_repeats > 0 or self.label_consistent or self.refuse_restatements

    def _reading(self, sentence: tuple[int, ...]) -> dict[str, float]:
        reading = self._readings.get(sentence)
        if reading is None:
            if len(self._readings) > _CACHE_LIMIT:
                self._readings.clear()
            said = self.labeler.sentence_readings(self.text(sentence))
            reading = self._readings[sentence] = dict(said[0][1]) if said else {}
        return reading

    def text(self, ids: Sequence[int]) -> str:
        return " ".join(self.itos[i] for i in ids)

    def sentences(self, tokens: Sequence[int]) -> list[tuple[int, tuple[int, ...]]]:
        """``(start index, word ids)`` of each sentence ended by a period in ``tokens`` (``<bos>`` first)."""
        out, start = [], 1
        for k in range(1, len(tokens)):
            if tokens[k] == self.period_id:
                if k > start:
                    out.append((start, tuple(tokens[start:k])))
                start = k + 1
        return out

    def check(self, tokens: Sequence[int]) -> Refusal | None:
        """Judge the last sentence of ``tokens`` (ids, ``<bos>`` first, ending with the period)."""
        # template-worded reports reach the same sentence sequences again and again: judge each once
        key = (tuple(tokens), self.max_sentence_repeats, self.label_consistent, self.refuse_restatements)
        if key not in self._verdicts:
            if len(self._verdicts) > _CACHE_LIMIT:
                self._verdicts.clear()
            self._verdicts[key] = self._check(tokens)
        return self._verdicts[key]

    def _check(self, tokens: Sequence[int]) -> Refusal | None:
        sentences = self.sentences(tokens)
        if not sentences:
            return None
        (start, last), earlier = sentences[-1], sentences[:-1]
        if self.max_sentence_repeats and sum(s == last for _, s in earlier) >= self.max_sentence_repeats:
            return Refusal(REPEAT, start)
        if not (self.label_consistent or self.refuse_restatements):
            return None
        said = said_values(self._reading(s) for _, s in earlier)
        reading = self._reading(last)
        conflict = sentence_conflict(said, any(s == last for _, s in earlier), reading)
        if conflict == CONTRADICTION and self.label_consistent:
            return Refusal(CONTRADICTION, start + self._naming_word(last, contradicted(said, reading)))
        if conflict == RESTATEMENT and self.refuse_restatements:
            return Refusal(RESTATEMENT, start)
        return None

    def _naming_word(self, sentence: tuple[int, ...], names: list[str]) -> int:
        """The index in ``sentence`` of the word with which a prefix first mentions one of ``names``."""
        for j in range(1, len(sentence) + 1):
            if any(name in lift_opacity(self._reading(sentence[:j])) for name in names):
                return j - 1
        return 0
