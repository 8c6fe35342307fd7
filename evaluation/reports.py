"""Everything about a set of generated reports: NLG, clinical efficacy, diversity."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shared.io import read_json
from shared.metrics.clinical import clinical_efficacy
from shared.metrics.nlg import align, nlg_scores
from shared.metrics.report_quality import report_quality_scores
from shared.text.labeler import ReportLabeler

from .diversity import diversity_scores

__all__ = ["evaluate_reports", "load_report_map", "load_training_reports", "markdown_table"]


def load_report_map(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{study id: report}`` from a JSON object, or from an R2Gen ``annotation.json`` (all splits)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reports file not found: {path}")
    data = read_json(path)
    if isinstance(data, Mapping) and any(k in data for k in ("train", "val", "test")) and all(
        isinstance(v, list) for v in data.values()
    ):
        out = {}
        for split in ("train", "val", "test"):
            for entry in data.get(split, []):
                if "id" not in entry or "report" not in entry:
                    raise ValueError(f"{path}: an entry of '{split}' lacks 'id' or 'report'")
                out[str(entry["id"])] = str(entry["report"])
        return out
    if not isinstance(data, Mapping) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{path} must map study ids to report strings (or be an R2Gen annotation.json)")
    return {str(k): v for k, v in data.items()}


def load_training_reports(path: str | os.PathLike[str]) -> list[str]:
    """The training reports of an R2Gen ``annotation.json`` (its ``train`` split), or every report of a
    ``{id: report}`` JSON file."""
    data = read_json(path) if Path(path).is_file() else None
    if isinstance(data, Mapping) and isinstance(data.get("train"), list):
        return [str(e["report"]) for e in data["train"] if "report" in e]
    return list(load_report_map(path).values())


def evaluate_reports(
    preds: Mapping[str, str],
    refs: Mapping[str, str],
    labeler: Any | None = None,
    uncertain: str = "negative",
    meteor: bool | None = None,
    clean: str | None = "iu_xray",
    training_reports: list[str] | None = None,
) -> dict[str, Any]:
    """All report metrics of ``preds`` against ``refs`` on the studies both hold.

    Args:
        labeler: anything with ``label_batch(reports) -> (N, 14)``; the rule-based labeler by default.
        uncertain: CE convention for uncertain mentions, ``"negative"`` or ``"positive"``.
        training_reports: the training reports, for the novel-sentence rate (template-worded data only).

    Returns:
        Flat dict: ``n``, ``bleu_1``..``bleu_4``, ``meteor``, ``rouge_l``, ``cider``, the ``ce_*`` variants,
        diversity keys (``distinct_n``, ``repeated_sentence_rate``, ``unique_report_rate``), report quality
        (``self_contradiction_rate``, ``restatement_rate``, ``unfinished_rate``, ``repeated_sentence_report_rate``,
        with ``training_reports`` ``novel_sentence_rate``: :mod:`shared.metrics.report_quality`).
    """
    ids, p, r = align(preds, refs)
    labeler = labeler or ReportLabeler()
    out: dict[str, Any] = {"n": len(ids)}
    out.update(nlg_scores(p, r, clean=clean, meteor=meteor))
    out.update(clinical_efficacy(labeler.label_batch(p), labeler.label_batch(r), uncertain=uncertain))
    out.update(diversity_scores(p, clean=clean))
    # the quality reading needs a labeler that reads sentence by sentence (the rule-based one does)
    reader = labeler if hasattr(labeler, "sentence_readings") else ReportLabeler()
    out.update(report_quality_scores(p, reader, training_reports, clean=clean or "iu_xray"))
    return out


def markdown_table(metrics: Mapping[str, Any], keys: list[str] | None = None) -> str:
    """A two-column markdown table of numeric metrics."""
    keys = keys or [k for k, v in metrics.items() if isinstance(v, (int, float, np.floating))]
    lines = ["| metric | value |", "|---|---:|"]
    for k in keys:
        v = metrics[k]
        lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    return "\n".join(lines)
