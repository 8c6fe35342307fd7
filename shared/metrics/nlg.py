"""Natural-language metrics with pycocoevalcap, following the R2Gen protocol.

R2Gen (and most report-generation papers after it) compute BLEU-1..4, METEOR, ROUGE-L and
CIDEr with the pycocoevalcap scorers on *cleaned* text (the tokenizer's cleaning: lower case,
punctuation stripped, sentences joined by " . "), one reference per study, without the PTB
tokenizer. SPICE is left out: it downloads Stanford CoreNLP at run time.

METEOR runs a Java program; :func:`java_status` checks Java up front, and when Java is missing
the result says so (``meteor`` is NaN and ``meteor_error`` explains) instead of failing late.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from ..text.tokenizer import clean_report

logger = logging.getLogger(__name__)

__all__ = ["java_status", "nlg_scores", "align"]

NLG_KEYS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")
_METRICS = ("bleu", "meteor", "rouge_l", "cider")


def java_status() -> tuple[bool, str]:
    """(True, version line) when a working ``java`` is on PATH, else (False, why)."""
    java = shutil.which("java")
    if java is None:
        return False, "java is not on PATH; METEOR (pycocoevalcap) needs Java 8+"
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        return False, f"java did not run: {err}"
    if out.returncode != 0:
        return False, f"java -version failed: {(out.stderr or out.stdout).strip().splitlines()[:1]}"
    return True, (out.stderr or out.stdout).strip().splitlines()[0]


def align(preds: Mapping[str, str], refs: Mapping[str, str]) -> tuple[list[str], list[str], list[str]]:
    """(ids, preds, refs) over the ids both hold; raises when a prediction has no reference."""
    missing = sorted(set(preds) - set(refs))
    if missing:
        raise ValueError(f"{len(missing)} predicted studies have no reference, e.g. '{missing[0]}'")
    ids = [k for k in refs if k in preds]
    if not ids:
        raise ValueError("no study has both a prediction and a reference")
    return ids, [preds[k] for k in ids], [refs[k] for k in ids]


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:
        # The scorer keeps a Java process; stop it now rather than at garbage collection.
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
    return float(score)


def nlg_scores(
    preds: Sequence[str],
    refs: Sequence[str],
    clean: str | None = "iu_xray",
    meteor: bool | None = None,
    only: Sequence[str] | None = None,
) -> dict[str, float | str]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of ``preds`` against ``refs`` (same order).

    Args:
        preds, refs: one generated and one reference report per study.
        clean: R2Gen cleaning rules to apply first (``"iu_xray"``, ``"mimic_cxr"``), or ``None``
            when the texts are already cleaned.
        meteor: ``True`` requires METEOR (raises without Java), ``False`` skips it, ``None``
            computes it when Java works and otherwise reports NaN with ``meteor_error``.
        only: a subset of ``("bleu", "meteor", "rouge_l", "cider")`` to compute (all by default),
            e.g. BLEU alone for model selection inside a training run.

    Returns:
        ``{"bleu_1", ..., "bleu_4", "meteor", "rouge_l", "cider"}`` (and ``meteor_error`` when skipped).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} predictions for {len(refs)} references")
    if not refs:
        raise ValueError("no reports to score")
    wanted = set(only) if only is not None else set(_METRICS)
    if wanted - set(_METRICS):
        raise ValueError(f"unknown NLG metric(s) {sorted(wanted - set(_METRICS))}; known: {', '.join(_METRICS)}")

    def prep(text: str) -> str:
        text = clean_report(text, clean) if clean else text
        # pycocoevalcap's scorers need at least one token per text.
        return text if text.strip() else "<empty>"

    gts = {i: [prep(r)] for i, r in enumerate(refs)}
    res = {i: [prep(p)] for i, p in enumerate(preds)}
    out: dict[str, float | str] = {}
    if "bleu" in wanted:
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"bleu_{n + 1}": float(b) for n, b in enumerate(bleu)})
    if "meteor" in wanted:
        out.update(_meteor_or_nan(gts, res, meteor))
    if "rouge_l" in wanted:
        out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if "cider" in wanted:
        out["cider"] = float(Cider().compute_score(gts, res)[0])
    return out


def _meteor_or_nan(gts: dict[int, list[str]], res: dict[int, list[str]], meteor: bool | None) -> dict[str, float | str]:
    out: dict[str, float | str] = {}
    ok, why = java_status() if meteor is not False else (False, "METEOR skipped on request")
    if ok:
        out["meteor"] = _meteor(gts, res)
    elif meteor:
        raise RuntimeError(f"METEOR cannot run: {why}")
    else:
        if meteor is None:
            logger.warning("METEOR cannot run (%s); reporting NaN", why)
        out["meteor"] = math.nan
        out["meteor_error"] = why
    return out
