"""Finding-balanced sampling of training studies: rare findings drawn more often than they occur.

A generator trained on the natural frequencies sees a finding of 0.8% prevalence in one batch of two; with
``finding_balance`` (a recipe's ``data.finding_balance``) each study is drawn with probability proportional to
``(1 / n_f) ** power``, ``n_f`` the training count of its rarest positive finding (studies without one form their
own group). ``power`` 0 is the natural mix, 1 draws every finding about equally often, 0.5 is square-root
sampling (between the two, the usual choice for long-tailed data). The draw of each epoch is fixed by
``(seed, epoch)``, so a resumed run draws the same studies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["finding_balance_weights", "BalancedSampler", "sampled_shares"]


def finding_balance_weights(labels: np.ndarray, power: float) -> np.ndarray:
    """Per-study sampling weights (N,) from labels (N, C) (1 positive; 0, -1 or NaN not), summing to 1.

    Raises ValueError for a negative ``power`` or labels that are not two-dimensional.
    """
    labels = np.asarray(labels, float)
    if power < 0:
        raise ValueError(f"finding_balance must be >= 0, got {power}")
    if labels.ndim != 2:
        raise ValueError(f"labels must be (studies, findings), got shape {labels.shape}")
    positive = labels == 1
    counts = positive.sum(0)
    # each study's group: its rarest positive finding, or "none" (column C) when it has none
    rarity = np.where(positive, counts[None, :], np.inf).min(1)
    none = ~positive.any(1)
    rarity[none] = none.sum()
    weights = (1.0 / rarity) ** power
    return weights / weights.sum()


def sampled_shares(labels: np.ndarray, weights: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """The expected share of drawn studies that show each finding, under ``weights`` (for the log)."""
    positive = np.asarray(labels, float) == 1
    return {name: round(float(weights[positive[:, k]].sum()), 4) for k, name in enumerate(names)}


class BalancedSampler(torch.utils.data.Sampler[int]):
    """``len(weights)`` study indices per epoch, drawn with replacement in proportion to ``weights``; the draw
    is a function of ``(seed, epoch)`` (the trainer calls :meth:`set_epoch`, a resumed run too)."""

    def __init__(self, weights: np.ndarray, seed: int) -> None:
        self.weights = torch.as_tensor(np.asarray(weights, float), dtype=torch.float64)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self) -> Iterator[int]:
        state = np.random.SeedSequence([self.seed % 2**32, self.epoch, 0xBA1]).generate_state(1)[0]
        g = torch.Generator().manual_seed(int(state))
        yield from torch.multinomial(self.weights, len(self.weights), replacement=True, generator=g).tolist()
