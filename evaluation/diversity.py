"""Diversity and repetition of generated reports.

* ``distinct_n``: distinct n-grams / all n-grams over the whole set of generated reports
  (cleaned text), n = 1..4; 1.0 means no n-gram repeats anywhere.
* ``repeated_sentence_rate``: fraction of sentences that repeat an earlier sentence of the
  same report (a common failure of report decoders).
* ``unique_report_rate``: distinct reports / reports (1.0: every report differs).
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.text.tokenizer import clean_report

__all__ = ["diversity_scores"]


def diversity_scores(reports: Sequence[str], max_n: int = 4, clean: str | None = "iu_xray") -> dict[str, float]:
    if not reports:
        raise ValueError("no reports")
    texts = [clean_report(r, clean) if clean else r for r in reports]
    out: dict[str, float] = {}
    for n in range(1, max_n + 1):
        grams, total = set(), 0
        for t in texts:
            words = t.split()
            for i in range(len(words) - n + 1):
                grams.add(tuple(words[i : i + n]))
                total += 1
        out[f"distinct_{n}"] = len(grams) / total if total else 0.0
    repeated = sentences = 0
    for t in texts:
        seen: set[str] = set()
        for s in (s.strip() for s in t.split(" . ")):
            s = s.rstrip(" .")
            if not s:
                continue
            sentences += 1
            repeated += s in seen
            seen.add(s)
    out["repeated_sentence_rate"] = repeated / sentences if sentences else 0.0
    out["unique_report_rate"] = len(set(texts)) / len(texts)
    return out
