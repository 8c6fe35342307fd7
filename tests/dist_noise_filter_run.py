"""Run by tests/test_distributed.py under `accelerate launch` with 2 CPU processes (gloo): every rank
updates the noise filter with its own share of each batch; each saves the filter's state."""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from report2image.noise_filter import LatentNoiseFilter


def batches(rank: int, world: int, steps: int = 6, per_rank: int = 5):
    """The same global batches on every rank (fixed seed); each rank keeps its slice, and a rank may
    keep fewer samples (as the conditioned subset of a batch varies)."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        n = per_rank * world
        idx = torch.randperm(40, generator=gen)[:n]
        t = torch.randint(0, 1000, (n,), generator=gen)
        loss = torch.rand(n, generator=gen)
        cos = torch.rand(n, generator=gen)
        keep = torch.arange(n) % world == rank
        keep &= torch.arange(n) != rank  # rank 0 drops its first sample, rank 1 another: unequal sizes
        yield idx[keep], t[keep], loss[keep], cos[keep]


def main() -> None:
    out = Path(sys.argv[1])
    acc = Accelerator(cpu=True)
    f = LatentNoiseFilter(40, signal="both", warmup_steps=0)
    for idx, t, loss, cos in batches(acc.process_index, acc.num_processes):
        f.update(idx, t, loss, cos)
    torch.save({k: v.clone() for k, v in f.state_dict().items()}, out / f"filter{acc.process_index}.pt")
    acc.end_training()


if __name__ == "__main__":
    main()
