"""What a training run keeps beside the model and the loop: precision, seeds, per-item RNG, the EMA, atomic saves.

:mod:`shared.training.loop` holds the loop itself; these pieces are what makes it resumable bit for bit
(:class:`EpochSeededDataset`, the step counter and the EMA as checkpointed objects) and what makes a saved folder
appear whole or not at all (:func:`save_folder_atomically`).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.balance import BalancedSampler

logger = logging.getLogger(__name__)

__all__ = ["MIXED_PRECISION", "resolve_mixed_precision", "seed_everything", "EpochSeededDataset", "training_loader",
           "sync_batchnorm", "save_folder_atomically"]


MIXED_PRECISION = ("no", "fp16", "bf16", "auto")


def resolve_mixed_precision(value: str) -> str:
    """``train.mixed_precision`` as accelerate takes it: ``auto`` becomes ``bf16`` on a CUDA device that computes
    bf16 natively and ``no`` (fp32) elsewhere, and says which in the log."""
    if value not in MIXED_PRECISION:
        raise ValueError(f"train.mixed_precision must be one of {', '.join(MIXED_PRECISION)}; got {value!r}")
    if value != "auto":
        return value
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        logger.info("train.mixed_precision auto: bf16 (%s computes bf16 natively)", torch.cuda.get_device_name())
        return "bf16"
    logger.info("train.mixed_precision auto: fp32 (no CUDA device with bf16 units; bf16 on this CPU would be slow)")
    return "no"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochSeededDataset(torch.utils.data.Dataset):
    """A map-style dataset whose item ``i`` in epoch ``e`` is drawn under RNG seeds of its own, derived
    from ``(seed, e, i)``: random augmentations (torchvision's crop and jitter draw from the global
    RNGs) no longer depend on when the loader fetched the item.

    Why: accelerate's loader fetches one batch ahead, so the batch after a checkpoint has already
    drawn its augmentation from the global RNG when ``save_state`` records that RNG; a resumed run
    would draw it a second time and every later random number (dropout, diffusion noise) would
    shift. With per-item seeds the global RNG only serves the training step, and a resumed run
    ends bit-identical to an uninterrupted one. The global RNG states are restored after each item.

    Attributes of the wrapped dataset are reachable through this one (``loader.dataset.tokenizer``).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch (a resumed run sets the epoch it resumes in)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        # SeedSequence mixes the three numbers (nearby seeds give unrelated streams)
        item_seed = int(np.random.SeedSequence([self.seed % 2**32, self.epoch, int(index)]).generate_state(1)[0])
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
        try:
            random.seed(item_seed)
            np.random.seed(item_seed)
            torch.manual_seed(item_seed)
            return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.random.set_rng_state(torch_state)

    def __getattr__(self, name: str) -> Any:
        # only called for names this wrapper lacks; "dataset" itself is looked up through __dict__ so
        # that unpickling (in loader workers), which runs before __init__, does not recurse
        if name == "dataset" or "dataset" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["dataset"], name)


def training_loader(dataset: torch.utils.data.Dataset, batch_size: int, seed: int,
                    collate_fn: Callable | None = None, num_workers: int = 0,
                    weights: np.ndarray | None = None) -> torch.utils.data.DataLoader:
    """A shuffled loader with a seeded generator, dropping the last partial batch when there is more than one.

    The dataset is wrapped in :class:`EpochSeededDataset`, so each item's random augmentation is fixed
    by ``(seed, epoch, index)`` and a resumed run draws the same ones (the trainer sets the epoch).
    ``weights`` (N,): draw studies with replacement in proportion to them instead of shuffling
    (:class:`shared.data.balance.BalancedSampler`, fixed by ``(seed, epoch)`` as well).
    """
    g = torch.Generator().manual_seed(seed)
    sampler = BalancedSampler(weights, seed) if weights is not None else None
    return torch.utils.data.DataLoader(EpochSeededDataset(dataset, seed), batch_size=batch_size,
                                       shuffle=sampler is None, sampler=sampler, collate_fn=collate_fn,
                                       num_workers=num_workers, generator=g,
                                       drop_last=len(dataset) > batch_size)  # type: ignore[arg-type]


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (renames) to disk, where the OS allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` to disk before it is renamed into place (a rename can
    otherwise reach the disk before the data it names)."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(folder)


def sync_batchnorm(model: nn.Module, num_processes: int, device_type: str, setting: bool | None) -> nn.Module:
    """``model`` with SyncBatchNorm in place of BatchNorm when ``num_processes`` GPU processes train
    (``setting``: see :attr:`TrainConfig.sync_batchnorm`). State dict keys are unchanged, so saved
    folders load into the plain model."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if num_processes < 2 or not has_bn or setting is False:
        return model
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if setting:
        raise ValueError("train.sync_batchnorm=true needs GPU processes: PyTorch has no SyncBatchNorm on the CPU")
    logger.info("BatchNorm statistics stay per process on %d CPU processes (SyncBatchNorm needs GPUs)",
                num_processes)
    return model


def save_folder_atomically(save: Callable[[Path], None], target: Path) -> None:
    """Call ``save(tmp_dir)`` then replace ``target`` by it, so a crash never leaves half a folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save(tmp)
        _fsync_tree(tmp)
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _Counter:
    """Checkpointed loop state: optimisation steps done, best validation metric, the run's history (logs and
    validation scores so far) and the training loop's wall time so far, so that a resumed run's
    ``history.json`` and time cover the whole run, not just the part after its last interruption."""

    def __init__(self) -> None:
        self.step = 0
        self.best: float | None = None
        self.best_step: int | None = None
        self.history: list[dict[str, float]] = []
        self.wall_seconds = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "best": self.best, "best_step": self.best_step, "history": list(self.history),
                "wall_seconds": self.wall_seconds}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step, self.best, self.best_step = int(state["step"]), state["best"], state["best_step"]
        # checkpoints written before the history and time were kept hold neither
        self.history = list(state.get("history", []))
        self.wall_seconds = float(state.get("wall_seconds", 0.0))


class _EMA:
    """Exponential moving average at a constant ``decay``: the parameters through diffusers' ``EMAModel``, the
    floating-point buffers (BatchNorm statistics, which ``EMAModel`` leaves out) beside it.

    ``EMAModel`` is pinned to a constant decay from the first step (``min_decay=decay`` overrides its
    ``(1 + n) / (10 + n)`` warm-up; ``update_after_step=-1`` makes its first step average instead of copy), so
    the average is the one this loop always computed: ``shadow = decay * shadow + (1 - decay) * weight``.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        from diffusers.training_utils import EMAModel

        self.decay = float(decay)
        self.params = EMAModel(model.parameters(), decay=self.decay, min_decay=self.decay, update_after_step=-1)
        self.param_names = [k for k, _ in model.named_parameters()]
        self.buffers = {k: v.detach().clone() for k, v in model.named_buffers() if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.params.step(model.parameters())
        for k, v in model.named_buffers():
            if k in self.buffers:
                self.buffers[k].lerp_(v.detach(), 1.0 - self.decay)

    def copy_to(self, model: nn.Module) -> None:
        self.params.copy_to(model.parameters())
        model.load_state_dict({**model.state_dict(), **self.buffers})

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "params": self.params.state_dict(), "buffers": self.buffers}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.decay = state["decay"]
        if "shadow" in state:  # a checkpoint from before EMAModel: one {name: tensor} dict of both
            shadow = state["shadow"]
            self.params.shadow_params = [shadow[k].clone() for k in self.param_names]
            self.buffers = {k: shadow[k].clone() for k in self.buffers}
            return
        self.params.load_state_dict(state["params"])
        self.buffers = {k: v.clone() for k, v in state["buffers"].items()}
