"""Clinical efficacy (CE): agreement of findings between generated and reference reports.

Both reports are labelled by the same labeler (:class:`shared.text.labeler.ReportLabeler` by
default), then compared per observation. Every variant is explicit and named in the output;
``docs/metrics.md`` gives the formulas.

* ``ce_micro_*`` / ``ce_macro_*``: precision, recall, F1 over the 14 CheXpert observations
  (R2Gen / CMCRL convention). Macro averages the labels that are defined, i.e. positive in at
  least one reference or prediction; ``ce_macro_labels`` says how many.
* ``ce5_micro_*`` / ``ce5_macro_*``: the same over the 5-label CheXbert subset
  (cardiomegaly, edema, consolidation, atelectasis, pleural effusion).
* ``ce_example_*``: example-based precision, recall, F1 over positives (PromptMRG convention):
  computed per report, then averaged over reports.

``uncertain`` decides what an uncertain mention (-1) counts as: ``"negative"`` (default, the
R2Gen convention) or ``"positive"``. Not mentioned (NaN) is negative.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..labels import CHEXBERT_5, CHEXPERT_LABELS

__all__ = ["binarize", "clinical_efficacy", "per_label_scores"]


def binarize(labels: np.ndarray, uncertain: str = "negative") -> np.ndarray:
    """(N, L) labels in {1, 0, -1, NaN} -> bool positives."""
    if uncertain not in ("negative", "positive"):
        raise ValueError(f"uncertain must be 'negative' or 'positive', got {uncertain!r}")
    labels = np.asarray(labels, dtype=np.float64)
    positive = labels == 1.0
    if uncertain == "positive":
        positive |= labels == -1.0
    return positive


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        r = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return p, r, f


def per_label_scores(pred: np.ndarray, ref: np.ndarray, names: Sequence[str] = CHEXPERT_LABELS) -> dict[str, dict]:
    """Per-observation precision/recall/F1/support from boolean (N, L) matrices."""
    tp = (pred & ref).sum(0).astype(float)
    fp = (pred & ~ref).sum(0).astype(float)
    fn = (~pred & ref).sum(0).astype(float)
    p, r, f = _prf(tp, fp, fn)
    return {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(ref[:, i].sum())}
            for i, n in enumerate(names)}


def _micro_macro(pred: np.ndarray, ref: np.ndarray, prefix: str) -> dict[str, float]:
    tp, fp, fn = (pred & ref).sum(0), (pred & ~ref).sum(0), (~pred & ref).sum(0)
    mp, mr, mf = _prf(np.array(tp.sum(), float), np.array(fp.sum(), float), np.array(fn.sum(), float))
    p, r, f = _prf(tp.astype(float), fp.astype(float), fn.astype(float))
    defined = (tp + fp + fn) > 0
    out = {f"{prefix}_micro_precision": float(mp), f"{prefix}_micro_recall": float(mr), f"{prefix}_micro_f1": float(mf)}
    if defined.any():
        out.update({f"{prefix}_macro_precision": float(p[defined].mean()),
                    f"{prefix}_macro_recall": float(r[defined].mean()),
                    f"{prefix}_macro_f1": float(f[defined].mean())})
    else:
        out.update({f"{prefix}_macro_precision": 0.0, f"{prefix}_macro_recall": 0.0, f"{prefix}_macro_f1": 0.0})
    out[f"{prefix}_macro_labels"] = int(defined.sum())
    return out


def clinical_efficacy(
    pred_labels: np.ndarray, ref_labels: np.ndarray, uncertain: str = "negative"
) -> dict[str, float]:
    """All CE variants from (N, 14) label matrices in CheXpert order.

    Returns:
        Flat dict: ``ce_micro_{precision,recall,f1}``, ``ce_macro_{...}``, ``ce_macro_labels``,
        ``ce5_micro_*``, ``ce5_macro_*``, ``ce_example_{precision,recall,f1}``, and
        ``ce_uncertain_as_positive`` (0/1) recording the convention used.
    """
    pred_labels, ref_labels = np.asarray(pred_labels, float), np.asarray(ref_labels, float)
    if pred_labels.shape != ref_labels.shape or pred_labels.ndim != 2 or pred_labels.shape[1] != len(CHEXPERT_LABELS):
        raise ValueError(f"label matrices must both be (N, {len(CHEXPERT_LABELS)}), "
                         f"got {pred_labels.shape} and {ref_labels.shape}")
    pred, ref = binarize(pred_labels, uncertain), binarize(ref_labels, uncertain)
    out = _micro_macro(pred, ref, "ce")
    five = [CHEXPERT_LABELS.index(n) for n in CHEXBERT_5]
    out.update(_micro_macro(pred[:, five], ref[:, five], "ce5"))
    inter = (pred & ref).sum(1).astype(float)
    npred, nref = pred.sum(1).astype(float), ref.sum(1).astype(float)
    both_empty = (npred == 0) & (nref == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ep = np.where(both_empty, 1.0, np.where(npred > 0, inter / npred, 0.0))
        er = np.where(both_empty, 1.0, np.where(nref > 0, inter / nref, 0.0))
        ef = np.where(both_empty, 1.0, np.where(npred + nref > 0, 2 * inter / (npred + nref), 0.0))
    out.update({"ce_example_precision": float(ep.mean()), "ce_example_recall": float(er.mean()),
                "ce_example_f1": float(ef.mean())})
    out["ce_uncertain_as_positive"] = float(uncertain == "positive")
    return out
