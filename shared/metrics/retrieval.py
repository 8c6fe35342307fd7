"""Retrieval evaluation: image -> report and report -> image.

* ``i2t_recall@K`` / ``t2i_recall@K``: fraction of queries whose own pair is among the top K.
* ``i2t_label_precision@K`` / ``t2i_label_precision@K``: mean fraction of the top K retrieved items
  whose CheXpert positive-label set equals the query's (what a radiologist would call "a report
  of the same findings"); ``*_label_chance`` is the expected value of a random ranking.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["retrieval_metrics"]


def _label_keys(labels: np.ndarray) -> list[bytes]:
    return [np.packbits(row == 1).tobytes() for row in np.asarray(labels)]


def retrieval_metrics(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, labels: np.ndarray | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Metrics for N paired, unit-norm embeddings (N, E); ``labels`` (N, 14) for label-matched precision."""
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"embedding shapes differ: {tuple(image_embeds.shape)} vs {tuple(text_embeds.shape)}")
    n = len(image_embeds)
    sim = (image_embeds.float() @ text_embeds.float().T).cpu()
    out: dict[str, float] = {"n": float(n)}
    keys = _label_keys(labels) if labels is not None else None
    if keys is not None:
        same = np.array([[a == b for b in keys] for a in keys])
        out["label_chance"] = float(same.mean())
    for direction, s in (("i2t", sim), ("t2i", sim.T)):
        order = torch.argsort(s, dim=1, descending=True).numpy()
        for k in ks:
            k_eff = min(k, n)
            top = order[:, :k_eff]
            out[f"{direction}_recall@{k}"] = float((top == np.arange(n)[:, None]).any(1).mean())
            if keys is not None:
                out[f"{direction}_label_precision@{k}"] = float(np.mean([same[i, top[i]].mean() for i in range(n)]))
    return out
