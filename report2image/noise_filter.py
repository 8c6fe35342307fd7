"""Diff-CXR's latent noise filtering: learn which training pairs behave as anomalies and drop them.

Two signals, both learnt as training goes:

* ``"loss"``: a pair whose report does not describe its image (or whose image is degraded) stays
  hard to denoise *given its report*. The filter keeps a running mean of the loss per timestep
  bucket (the loss depends mostly on t) and, per sample, an exponential moving average of
  ``loss / bucket mean``.
* ``"alignment"``: Diff-CXR's vision-aware text module is trained to align each report with its
  image; a pair it keeps apart (low cosine) is one whose report and image disagree. The filter
  keeps an exponential moving average of ``1 - cosine`` per sample.

A sample is flagged once a score is an outlier among the samples seen so far (above median + ``z``
robust standard deviations; ``"both"`` flags on either), and its loss weight goes to 0, ramped in
after ``warmup_steps`` so that the general patterns are learnt before anything is dropped. The
state lives in buffers, so it is saved and restored with the model's checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LatentNoiseFilter"]


def _gather_batches(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Each tensor (B_rank, ...) concatenated over the ranks in rank order (batch sizes may differ:
    the conditioned samples of each batch); as given when not distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    local = [None if t is None else t.detach().cpu() for t in tensors]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, local)
    device = next(t.device for t in tensors if t is not None)
    return tuple(None if tensors[i] is None else torch.cat([r[i] for r in everyone]).to(device)
                 for i in range(len(tensors)))


class LatentNoiseFilter(nn.Module):
    """Per-sample anomaly scores over ``num_samples`` training pairs (indices 0..N-1).

    Args:
        num_samples: size of the training set.
        num_train_timesteps: the scheduler's T.
        buckets: timestep buckets for the loss baseline.
        momentum: EMA momentum of the per-sample score.
        z: the outlier threshold in MADs above the median score.
        warmup_steps: steps before any sample is dropped (the filter then ramps in linearly over as many).
        min_seen: a sample is judged only after this many visits.
        signal: ``"loss"``, ``"alignment"`` or ``"both"``.
    """

    def __init__(self, num_samples: int, num_train_timesteps: int = 1000, buckets: int = 10, momentum: float = 0.7,
                 z: float = 3.0, warmup_steps: int = 100, min_seen: int = 2, signal: str = "loss") -> None:
        super().__init__()
        if signal not in ("loss", "alignment", "both"):
            raise ValueError(f"signal must be 'loss', 'alignment' or 'both', got {signal!r}")
        self.signal = signal
        self.num_train_timesteps, self.momentum, self.z = num_train_timesteps, momentum, z
        self.warmup_steps, self.min_seen = warmup_steps, min_seen
        self.register_buffer("bucket_mean", torch.zeros(buckets))
        self.register_buffer("bucket_count", torch.zeros(buckets))
        self.register_buffer("score", torch.zeros(num_samples))
        self.register_buffer("align_score", torch.zeros(num_samples))
        self.register_buffer("seen", torch.zeros(num_samples))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def _bucket(self, timesteps: torch.Tensor) -> torch.Tensor:
        b = len(self.bucket_mean)
        return (timesteps.long() * b // self.num_train_timesteps).clamp(0, b - 1)

    @torch.no_grad()
    def update(self, indices: torch.Tensor, timesteps: torch.Tensor, losses: torch.Tensor,
               cosines: torch.Tensor | None = None) -> None:
        """Record per-sample losses (B,) at timesteps (B,) -- and report-image cosines (B,) when the
        alignment signal is on -- for training indices (B,).

        Under several processes (``torch.distributed`` initialised) every rank's batch is gathered
        first, in rank order, so all ranks keep the same statistics, those one process would keep
        seeing the ranks' batches one after another.
        """
        indices, timesteps, losses, cosines = _gather_batches(indices, timesteps, losses, cosines)
        idx, bucket, losses = indices.long(), self._bucket(timesteps), losses.detach().float()
        for b in bucket.unique():
            sel = bucket == b
            n_old, n_new = self.bucket_count[b], sel.sum()
            self.bucket_mean[b] = (self.bucket_mean[b] * n_old + losses[sel].sum()) / (n_old + n_new)
            self.bucket_count[b] = n_old + n_new
        ratio = losses / self.bucket_mean[bucket].clamp_min(1e-8)
        first = self.seen[idx] == 0
        self.score[idx] = torch.where(first, ratio, self.momentum * self.score[idx] + (1 - self.momentum) * ratio)
        if cosines is not None:
            gap = 1.0 - cosines.detach().float().to(self.align_score.device)
            self.align_score[idx] = torch.where(first, gap, self.momentum * self.align_score[idx]
                                                + (1 - self.momentum) * gap)
        self.seen[idx] += 1
        self.step += 1

    def flagged(self) -> torch.Tensor:
        """(N,) bool: samples whose anomaly score is an outlier (only among samples seen enough)."""
        judged = self.seen >= self.min_seen
        if judged.sum() < 10:
            return torch.zeros_like(judged)
        flagged = torch.zeros_like(judged)
        scores = {"loss": [self.score], "alignment": [self.align_score], "both": [self.score, self.align_score]}
        for score in scores[self.signal]:
            s = score[judged]
            med = s.median()
            mad = (s - med).abs().median().clamp_min(1e-6)
            flagged |= judged & (score > med + self.z * 1.4826 * mad)
        return flagged

    def strength(self) -> float:
        """0 during warm-up, then a linear ramp to 1 over another ``warmup_steps``."""
        w = max(self.warmup_steps, 1)
        return float(min(max((int(self.step) - self.warmup_steps) / w, 0.0), 1.0))

    def weights(self, indices: torch.Tensor) -> torch.Tensor:
        """(B,) loss weights: 1 - strength for flagged samples, 1 otherwise."""
        w = torch.ones(len(indices), device=indices.device)
        s = self.strength()
        if s == 0.0:
            return w
        flagged = self.flagged()[indices.long().to(self.score.device)].to(w.device)
        return torch.where(flagged, torch.full_like(w, 1.0 - s), w)
