"""One Accelerate training loop for every model in the suite.

What it does, in the order of one optimisation step:

1. ``accelerator.accumulate(model)``: forward through the caller's ``loss_fn(model, batch)``,
   which returns a dict with a scalar ``"loss"`` (and any other scalars to log).
2. A NaN/inf loss stops the run with :class:`NonFiniteLossError`, naming the step and the last
   good checkpoint (nothing already written is touched).
3. ``accelerator.backward``; on ``sync_gradients``: gradient clipping, optimizer and LR-schedule
   steps, optional EMA update, logging (losses ``gather``-ed across processes), a
   ``save_state`` checkpoint every ``checkpoint_every`` steps (``total_limit`` kept), validation
   every ``eval_every`` steps with model selection on the validation metric (never on test):
   the best weights are written with ``save_pretrained`` to ``<output_dir>/best``.
4. At the end: ``<output_dir>/final`` (``save_pretrained``) and ``accelerator.end_training()``.

A run whose ``output_dir`` already holds checkpoints resumes from the latest one, with the
data order, RNG states, optimizer, scheduler and EMA restored, so an interrupted run ends with
the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..io import atomic_write_text
from .lock import RunLock
from .state import (  # the run's state pieces, re-exported: their names stay importable from here
    _EMA,
    EpochSeededDataset,
    _Counter,
    _fsync_dir,
    _fsync_tree,
    resolve_mixed_precision,
    save_folder_atomically,
    seed_everything,
    sync_batchnorm,
    training_loader,
)

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "Trainer", "TrainResult", "NonFiniteLossError", "seed_everything", "resolve_mixed_precision",
           "save_folder_atomically", "training_loader", "EpochSeededDataset"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class TrainConfig:
    """The ``train`` section of an experiment config."""

    output_dir: str = "runs/train"
    max_steps: int = 1000
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.999)
    lr_scheduler: str = "cosine"
    warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    #: ``no`` (fp32), ``fp16``, ``bf16``, or ``auto``: bf16 where the device computes it fast (a CUDA device with
    #: bf16 units), fp32 elsewhere (bf16 on a CPU without bf16 units made a step 15x slower), said in the log
    mixed_precision: str = "no"
    ema_decay: float | None = None
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 2
    eval_every: int = 500
    log_every: int = 50
    seed: int = 0
    report_to: str | None = None
    resume: bool = True
    progress: bool = True
    # NHWC weights: oneDNN's CPU convolutions of the CNN towers run faster in this layout, diffusers'
    # GroupNorm autoencoder slower, hence opt-in (measured by benchmarks/backbone_speed.py --channels-last).
    channels_last: bool = False
    #: BatchNorm layers become SyncBatchNorm when several GPU processes train, so the statistics are
    #: those of the global batch (None: exactly then; false: never; true: and refuse CPU ranks, where
    #: PyTorch has no SyncBatchNorm)
    sync_batchnorm: bool | None = None


@dataclass
class TrainResult:
    steps: int
    best_metric: float | None
    best_step: int | None
    history: list[dict[str, float]] = field(default_factory=list)
    output_dir: str = ""




LossFn = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]
EvalFn = Callable[[nn.Module], Mapping[str, float]]


class Trainer:
    """Train ``model`` with ``loss_fn`` on ``train_loader``; see the module docstring.

    Args:
        model: a ``ModelMixin`` (anything with ``save_pretrained``) or plain module.
        train_loader: a ``torch.utils.data.DataLoader``; it is cycled until ``max_steps``.
        loss_fn: ``(model, batch) -> {"loss": scalar tensor, ...}``.
        cfg: the train section.
        eval_fn: ``model -> {metric: value}`` on the validation split (called on every process;
            it should gather if it shards).
        select_metric, select_mode: the validation metric that picks ``best/`` and ``"max"``/``"min"``.
        optimizer: default AdamW over trainable parameters.
        save_extra: ``(folder) -> None`` writes what belongs beside the weights (tokenizer, labels).
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: torch.utils.data.DataLoader,
        loss_fn: LossFn,
        cfg: TrainConfig,
        eval_fn: EvalFn | None = None,
        select_metric: str | None = None,
        select_mode: str = "max",
        optimizer: torch.optim.Optimizer | None = None,
        save_extra: Callable[[Path], None] | None = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

        if select_mode not in ("max", "min"):
            raise ValueError(f"select_mode must be 'max' or 'min', got {select_mode!r}")
        if cfg.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {cfg.max_steps}")
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        seed_everything(cfg.seed)
        self.accelerator = Accelerator(
            # Without CUDA, cpu=True is what makes accelerate use gloo across launched processes.
            cpu=not torch.cuda.is_available(),
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
            log_with=cfg.report_to,
            # Checkpoints are named by step here, not by accelerate's automatic naming, whose
            # existence check races between processes.
            project_config=ProjectConfiguration(project_dir=str(self.out)),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
        )
        self.loss_fn, self.eval_fn = loss_fn, eval_fn
        self.select_metric, self.select_mode = select_metric, select_mode
        self.save_extra = save_extra
        model = sync_batchnorm(model, self.accelerator.num_processes, self.accelerator.device.type,
                               cfg.sync_batchnorm)
        if cfg.channels_last:
            # In place (param.data is swapped); save_pretrained and save_state write contiguous copies.
            model.to(memory_format=torch.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = optimizer or torch.optim.AdamW(
            params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=tuple(cfg.adam_betas)
        )
        from transformers import get_scheduler

        scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                                  num_training_steps=cfg.max_steps)
        self.model, self.optimizer, self.train_loader, self.scheduler = self.accelerator.prepare(
            model, optimizer, train_loader, scheduler
        )
        self.state = _Counter()
        self.accelerator.register_for_checkpointing(self.state)
        self.ema = _EMA(self.accelerator.unwrap_model(self.model), cfg.ema_decay) if cfg.ema_decay else None
        if self.ema is not None:
            self.accelerator.register_for_checkpointing(self.ema)

    # -- checkpoints -------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (a folder is named ``checkpoint_<step>`` only once written)."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [p for p in self.checkpoint_dir.iterdir()
                 if p.is_dir() and p.name.startswith("checkpoint_") and p.name.split("_")[-1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("_")[-1]))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def _resume(self) -> None:
        if self.accelerator.is_main_process and self.checkpoint_dir.is_dir():
            for partial in self.checkpoint_dir.glob(".partial_checkpoint_*"):
                # a save_state a killed run never finished: never a candidate, removed
                logger.warning("removing the incomplete checkpoint %s (the run was stopped while writing it)", partial)
                shutil.rmtree(partial, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        if not self.cfg.resume:
            return
        for candidate in reversed(self.checkpoints()):
            try:
                self.accelerator.load_state(str(candidate))
            except Exception as err:  # torch/safetensors raise many types for a damaged file
                logger.warning("cannot resume from %s (%s: %s); trying the one before", candidate,
                               type(err).__name__, err)
                continue
            logger.info("resumed from %s at step %d", candidate, self.state.step)
            return

    def _checkpoint(self) -> None:
        """``save_state`` into ``checkpoints/checkpoint_<step>``; keep the newest ``checkpoints_total_limit``.

        Every process writes into ``.partial_checkpoint_<step>``; the main process flushes the files to
        disk and renames the folder once all are done, so a checkpoint under its final name is always
        complete, whenever the run is killed.
        """
        acc = self.accelerator
        acc.wait_for_everyone()
        self._tick_wall_time()
        partial = self.checkpoint_dir / f".partial_checkpoint_{self.state.step}"
        acc.save_state(str(partial))
        acc.wait_for_everyone()
        if acc.is_main_process:
            _fsync_tree(partial)
            final = self.checkpoint_dir / f"checkpoint_{self.state.step}"
            if final.exists():  # the same step saved again (a resumed run): the new one wins
                shutil.rmtree(final)
            os.replace(partial, final)
            _fsync_dir(self.checkpoint_dir)
        acc.wait_for_everyone()
        if acc.is_main_process and self.cfg.checkpoints_total_limit:
            for old in self.checkpoints()[: -self.cfg.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _tick_wall_time(self) -> None:
        """Add the wall time since the last tick to the checkpointed total (``state.wall_seconds``)."""
        now = time.perf_counter()
        self.state.wall_seconds += now - self._wall_clock
        self._wall_clock = now

    def _save_model(self, name: str, use_ema: bool = True) -> Path:
        target = self.out / name
        model = self.accelerator.unwrap_model(self.model)
        if self.ema is not None and use_ema:
            model = copy.deepcopy(model)
            self.ema.copy_to(model)

        def save(folder: Path) -> None:
            if hasattr(model, "save_pretrained"):
                model.save_pretrained(folder)
            else:
                torch.save(model.state_dict(), folder / "model.pt")
            if self.save_extra is not None:
                self.save_extra(folder)

        if self.accelerator.is_main_process:
            save_folder_atomically(save, target)
        self.accelerator.wait_for_everyone()
        return target

    # -- evaluation --------------------------------------------------------------------
    def _evaluate(self, history: list[dict[str, float]]) -> None:
        if self.eval_fn is None:
            return
        model = self.accelerator.unwrap_model(self.model)
        backup = None
        if self.ema is not None:
            backup = {k: v.clone() for k, v in model.state_dict().items()}
            self.ema.copy_to(model)
        model.eval()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in self.eval_fn(model).items()}
        model.train()
        if backup is not None:
            model.load_state_dict(backup)
        metrics["step"] = self.state.step
        if self.accelerator.is_main_process:
            logger.info("step %d validation %s", self.state.step,
                        " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "step"))
        history.append({f"val/{k}" if k != "step" else k: v for k, v in metrics.items()})
        self.accelerator.log({f"val/{k}": v for k, v in metrics.items() if k != "step"}, step=self.state.step)
        if self.select_metric is None:
            return
        if self.select_metric not in metrics:
            raise KeyError(f"validation returned no '{self.select_metric}' (got {sorted(metrics)})")
        value = metrics[self.select_metric]
        best = self.state.best
        better = best is None or (value > best if self.select_mode == "max" else value < best)
        if better and math.isfinite(value):
            self.state.best, self.state.best_step = value, self.state.step
            self._save_model("best")

    # -- loop --------------------------------------------------------------------------
    def _start(self) -> None:
        """Output folder, the config beside it, trackers, and the latest checkpoint if any."""
        acc, cfg = self.accelerator, self.cfg
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "train_config.json", json.dumps(asdict(cfg), indent=2, default=str) + "\n")
        if cfg.report_to:
            acc.init_trackers("radloop", config={k: v for k, v in asdict(cfg).items()
                                                 if isinstance(v, (int, float, str, bool))})
        self._resume()

    def _micro_step(self, batch: Any) -> dict[str, Any]:
        """Forward, backward and (at the end of an accumulation window) the optimizer step."""
        acc, cfg = self.accelerator, self.cfg
        with acc.accumulate(self.model):
            out = self.loss_fn(self.model, batch)
            loss = out["loss"]
            if not torch.isfinite(loss.detach()).all():
                latest = self.latest_checkpoint()
                raise NonFiniteLossError(
                    f"loss became {loss.item()} at step {self.state.step + 1}; stopped. "
                    f"Last good checkpoint: {latest if latest else 'none yet'}"
                )
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm:
                acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return out

    def _after_step(self, running: dict[str, list[float]], history: list[dict[str, float]], bar: Any) -> bool:
        """Step work under ``sync_gradients``: EMA, logging, validation, checkpoints. Returns whether the
        running log means were flushed (the caller then starts them afresh)."""
        acc, cfg = self.accelerator, self.cfg
        self.state.step += 1
        # wall time of the step's data + forward + backward (validation and checkpoints excluded: measured
        # from the end of the previous step's work), so a user sees the epoch time of a recipe in the log
        step_seconds = time.perf_counter() - self._step_clock
        running.setdefault("seconds_per_step", []).append(step_seconds)
        self._train_seconds += step_seconds
        if self.ema is not None:
            self.ema.update(acc.unwrap_model(self.model))
        bar.update(1)
        flushed = False
        if self.state.step % cfg.log_every == 0 or self.state.step == cfg.max_steps:
            logs = {f"train/{k}": float(np.mean(v)) for k, v in running.items()}
            logs["train/lr"] = float(self.scheduler.get_last_lr()[0])
            acc.log(logs, step=self.state.step)
            history.append({"step": self.state.step, **logs})
            bar.set_postfix(loss=f"{logs.get('train/loss', float('nan')):.4f}")
            if not cfg.progress and acc.is_main_process:
                # without a progress bar (background runs) the log is where a user follows the run
                logger.info("step %d/%d %s", self.state.step, cfg.max_steps,
                            " ".join(f"{k.removeprefix('train/')}={v:.4g}" for k, v in logs.items()))
            flushed = True
        if self.state.step % cfg.eval_every == 0 or self.state.step == cfg.max_steps:
            self._evaluate(history)
        if self.state.step % cfg.checkpoint_every == 0 or self.state.step == cfg.max_steps:
            self._checkpoint()
        self._step_clock = time.perf_counter()
        return flushed

    def _speed(self, steps_before: int) -> dict[str, float | None]:
        """Seconds per optimizer step of this invocation (validation and checkpoints excluded) and the peak
        memory: the process's resident set on a CPU, the allocator's peak on a GPU."""
        steps = self.state.step - steps_before
        out: dict[str, float | None] = {"seconds_per_step": self._train_seconds / steps if steps else None,
               "steps_per_epoch": len(self.train_loader) / self.cfg.gradient_accumulation_steps}
        if torch.cuda.is_available() and self.accelerator.device.type == "cuda":
            out["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        else:
            import resource

            out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        return out

    def train(self) -> TrainResult:
        """Train to ``max_steps`` (resuming from the latest checkpoint); the output folder is held by a
        lock for the run (the main process takes it; a second run on the folder is refused)."""
        acc = self.accelerator
        lock, refused = (RunLock(self.out), None) if acc.is_main_process else (None, None)
        if lock is not None:
            try:
                lock.acquire()
            except FileExistsError as err:
                refused = err
        # every rank learns the main process's answer, so none waits in a collective for a run that stopped
        held = acc.gather(torch.tensor([0.0 if refused else 1.0], device=acc.device))
        if refused is not None:
            raise refused
        if float(held.min()) == 0.0:
            raise FileExistsError(f"{self.out} is in use by another run (the main process says which)")
        try:
            return self._train()
        finally:
            if lock is not None:
                lock.release()

    def _train(self) -> TrainResult:
        from tqdm.auto import tqdm

        acc, cfg = self.accelerator, self.cfg
        # 1. where to start: a fresh folder or the latest complete checkpoint
        self._start()
        # a resumed run continues the history and the wall time its checkpoint holds
        history = self.state.history
        self._wall_clock, wall_before = time.perf_counter(), self.state.wall_seconds
        bar = tqdm(total=cfg.max_steps, initial=self.state.step, disable=not (acc.is_main_process and cfg.progress),
                   desc="train", unit="step")
        self.model.train()
        epoch_len = len(self.train_loader)
        if epoch_len == 0:
            raise ValueError("the training data loader is empty")
        # 2. a resumed run skips the batches its epoch already saw
        micro_done = self.state.step * cfg.gradient_accumulation_steps
        epoch, skip = divmod(micro_done, epoch_len)
        running: dict[str, list[float]] = {}
        self._step_clock, self._train_seconds, steps_before = time.perf_counter(), 0.0, self.state.step
        while self.state.step < cfg.max_steps:
            self.train_loader.set_epoch(epoch)
            if hasattr(self.train_loader.dataset, "set_epoch"):
                self.train_loader.dataset.set_epoch(epoch)
            loader = acc.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
            skip = 0
            for batch in loader:
                # 3. one micro-batch; the logged terms are gathered across processes
                out = self._micro_step(batch)
                for k, v in out.items():
                    if isinstance(v, torch.Tensor) and v.numel() == 1:
                        running.setdefault(k, []).append(float(acc.gather(v.detach().reshape(1).float()).mean()))
                if not acc.sync_gradients:
                    continue
                # 4. a whole optimizer step: EMA, logs, validation, checkpoints
                if self._after_step(running, history, bar):
                    running = {}
                if self.state.step >= cfg.max_steps:
                    break
            epoch += 1
        # 5. the final weights and the history
        bar.close()
        self._save_model("final")
        self._tick_wall_time()
        if acc.is_main_process:
            atomic_write_text(self.out / "history.json", json.dumps(history, indent=1) + "\n")
            # wall_seconds: the training loop's time over every invocation of the run (resumed_wall_seconds of it
            # before this one resumed); seconds_per_step: this invocation's
            atomic_write_text(self.out / "train_result.json", json.dumps(
                {"steps": self.state.step, "best_metric": self.state.best, "best_step": self.state.best_step,
                 "select_metric": self.select_metric, "wall_seconds": round(self.state.wall_seconds, 3),
                 "resumed_wall_seconds": round(wall_before, 3), **self._speed(steps_before)}, indent=1) + "\n")
        acc.end_training()
        return TrainResult(self.state.step, self.state.best, self.state.best_step, history, str(self.out))
