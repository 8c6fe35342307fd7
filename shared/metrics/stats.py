"""Multi-seed aggregation and paired significance tests between two systems.

Both tests resample *studies*: the two systems' outputs on the same study stay paired.

* :func:`paired_bootstrap`: confidence interval of metric(A) - metric(B) from ``n`` bootstrap
  resamples of the study set (percentile interval), with the fraction of resamples where A
  does not beat B as a one-sided p-value.
* :func:`approximate_randomization`: two-sided p-value of the observed difference under the
  null that the systems are exchangeable: each study's pair of outputs is swapped with
  probability 1/2 (Noreen, 1989), with the usual +1 correction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["aggregate_seeds", "paired_bootstrap", "approximate_randomization"]

Metric = Callable[[Sequence[Any], Sequence[Any]], float]


def aggregate_seeds(runs: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``{key: {"mean", "std", "n"}}`` over runs (sample std, ddof=1; NaNs ignored)."""
    if not runs:
        raise ValueError("no runs to aggregate")
    keys = sorted(set().union(*runs))
    out = {}
    for key in keys:
        values = np.array([float(r[key]) for r in runs if key in r and isinstance(r[key], (int, float))], float)
        values = values[~np.isnan(values)]
        if values.size == 0:
            continue
        out[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                    "n": int(values.size)}
    return out


def _check(a: Sequence, b: Sequence, refs: Sequence) -> int:
    if not (len(a) == len(b) == len(refs)) or len(refs) == 0:
        raise ValueError(f"need equally many outputs of A, B and references, got {len(a)}, {len(b)}, {len(refs)}")
    return len(refs)


def paired_bootstrap(
    metric: Metric, a: Sequence, b: Sequence, refs: Sequence, n: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, float]:
    """Bootstrap CI of ``metric(a, refs) - metric(b, refs)``.

    Returns:
        ``delta`` (on the full set), ``ci_low``, ``ci_high`` (``1 - alpha`` percentile interval),
        ``p_value`` (fraction of resamples with delta <= 0), ``n``.
    """
    size = _check(a, b, refs)
    rng = np.random.default_rng(seed)
    delta = metric(a, refs) - metric(b, refs)
    deltas = np.empty(n)
    for k in range(n):
        idx = rng.integers(0, size, size)
        sub_refs = [refs[i] for i in idx]
        deltas[k] = metric([a[i] for i in idx], sub_refs) - metric([b[i] for i in idx], sub_refs)
    low, high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    return {"delta": float(delta), "ci_low": float(low), "ci_high": float(high),
            "p_value": float((deltas <= 0).mean()), "n": n}


def approximate_randomization(
    metric: Metric, a: Sequence, b: Sequence, refs: Sequence, n: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Two-sided approximate randomization test of ``metric(a) - metric(b)``."""
    size = _check(a, b, refs)
    rng = np.random.default_rng(seed)
    observed = metric(a, refs) - metric(b, refs)
    hits = 0
    for _ in range(n):
        swap = rng.random(size) < 0.5
        sa = [b[i] if swap[i] else a[i] for i in range(size)]
        sb = [a[i] if swap[i] else b[i] for i in range(size)]
        if abs(metric(sa, refs) - metric(sb, refs)) >= abs(observed) - 1e-12:
            hits += 1
    return {"delta": float(observed), "p_value": (hits + 1) / (n + 1), "n": n}


def mean_ci(values: Sequence[float], alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean, low, high): a t-interval over seeds."""
    from scipy import stats

    x = np.asarray(values, float)
    if x.size < 2:
        return float(x.mean()), math.nan, math.nan
    half = stats.t.ppf(1 - alpha / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)
