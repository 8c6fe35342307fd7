"""The runs of ``radloop augment``: each (arm, seed) report model trained, scored and kept for reuse.

A run is reused when its ``scores.json`` (under ``<output_dir>/runs``) was written for the same training manifest
and recipe (:func:`fingerprint`). The full answer is hours of training (15 runs of ~45 minutes on a 2-core CPU), more
than one machine's life when ``runs/`` is not kept; ``run_archive`` names a folder kept with the code (committed)
where each finished run is also written, gzip'd with its predictions, so that a rerun on a fresh machine -- or a
clone in another folder -- reuses it and the paired test still has every run's predictions.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from evaluation.reports import evaluate_reports
from image2report.train import generate_reports, train_report_model
from shared.io import atomic_write_bytes, atomic_write_text
from shared.metrics.clinical import binarize, per_label_scores
from shared.text.labeler import ReportLabeler

if TYPE_CHECKING:
    from .augment import AugmentExperiment

logger = logging.getLogger(__name__)

#: per arm, per seed: a run's scores (or predictions, or minutes)
PerSeed = dict[str, dict[int, Any]]


def arm_scores(preds: dict[str, str], refs: dict[str, str], rare: Sequence[str], labeler: ReportLabeler) -> dict:
    """One run's scores: the overall report metrics and each rare finding's F1 (labeler on both sides)."""
    metrics = evaluate_reports(preds, refs, labeler=labeler, meteor=False)
    ids = sorted(set(preds) & set(refs))
    per = per_label_scores(binarize(labeler.label_batch([preds[i] for i in ids])),
                           binarize(labeler.label_batch([refs[i] for i in ids])))
    keep = ("bleu_4", "rouge_l", "cider", "ce_micro_f1", "ce_macro_f1")
    out = {k: float(metrics[k]) for k in keep if k in metrics}
    for name in rare:
        out[f"rare_f1/{name}"] = per[name]["f1"]
    out["rare_f1_mean"] = float(np.mean([per[name]["f1"] for name in rare])) if rare else float("nan")
    return out


def fingerprint(manifest: Path, exp: Any) -> str:
    """What a finished run's scores depend on: the training manifest and the report recipe
    (``data.allow_outside_root`` left out: it permits reading the manifest, it changes nothing read).

    The arms' manifests hold absolute image paths; the working directory is left out of them, so that the same
    experiment run from a clone in another folder has the same fingerprints (and reuses ``run_archive``).
    """
    recipe = asdict(exp)
    recipe["data"].pop("allow_outside_root", None)
    text = manifest.read_text().replace(str(Path.cwd().resolve()) + "/", "")
    h = hashlib.sha256(text.encode())
    h.update(json.dumps(recipe, default=str, sort_keys=True).encode())
    return h.hexdigest()


def arm_seeds(cfg: AugmentExperiment, arm: str) -> list[int]:
    """The amount curve's arms may run fewer seeds (``amount_seeds``) than the main arms."""
    return list(cfg.amount_seeds) if "@" in arm and cfg.amount_seeds else list(cfg.seeds)


def _run_name(arm: str, seed: int) -> str:
    return f"{re.sub(r'[^0-9a-zA-Z]+', '_', arm)}_seed{seed}"


def _finished(run_dir: Path, archive: Path | None, key: str) -> dict[str, Any] | None:
    """The run's saved scores when they were written for ``key``: its ``scores.json``, else the archive's copy."""
    done = run_dir / "scores.json"
    if done.is_file() and (saved := json.loads(done.read_text())).get("fingerprint") == key:
        return saved
    kept = archive / f"{run_dir.name}.json.gz" if archive else None
    if kept and kept.is_file() and (saved := json.loads(gzip.decompress(kept.read_bytes()))).get("fingerprint") == key:
        return saved
    return None


def _keep(saved: dict[str, Any], run_dir: Path, archive: Path | None) -> None:
    atomic_write_text(run_dir / "scores.json", json.dumps(saved) + "\n")
    if archive:
        archive.mkdir(parents=True, exist_ok=True)
        # mtime=0: the same run gives the same bytes (a rerun does not dirty a committed archive)
        data = gzip.compress((json.dumps(saved, sort_keys=True) + "\n").encode(), mtime=0)
        atomic_write_bytes(archive / f"{run_dir.name}.json.gz", data)


def train_arms(cfg: AugmentExperiment, arms: dict[str, Path], test: Path, refs: dict[str, str], rare: list[str],
               labeler: ReportLabeler, out: Path) -> tuple[PerSeed, PerSeed, PerSeed]:
    """Every arm over its seeds, each scored on the test split of ``test``: the scores, the predictions and
    the minutes of training and scoring of each run (measured when it ran, kept by a rerun that reuses it)."""
    runs: PerSeed = {arm: {} for arm in arms}
    preds_by: PerSeed = {arm: {} for arm in arms}
    minutes: PerSeed = {arm: {} for arm in arms}
    archive = Path(cfg.run_archive) if cfg.run_archive else None
    seeds = sorted({seed for arm in arms for seed in arm_seeds(cfg, arm)})
    plan = [(seed, arm, manifest) for seed in seeds for arm, manifest in arms.items() if seed in arm_seeds(cfg, arm)]
    for seed, arm, manifest in tqdm(plan, desc="augment: train + score", unit="run"):
        exp = copy.deepcopy(cfg.report)
        exp.data.annotation = str(manifest)
        # the arms' manifests are written here, with absolute paths to the real and synthetic images
        exp.data.allow_outside_root = True
        exp.train.seed = seed
        run_dir = out / "runs" / _run_name(arm, seed)
        exp.train.output_dir = str(run_dir)
        key = fingerprint(manifest, exp)
        if (saved := _finished(run_dir, archive, key)) is not None:
            logger.info("augment %s seed %d: finished before, reusing it", arm, seed)
        else:
            started = time.perf_counter()
            train_report_model(exp)
            preds = generate_reports(str(run_dir / "best"), str(test), "test")  # the recipe's decoding, saved with it
            saved = {"fingerprint": key, "scores": arm_scores(preds, refs, rare, labeler), "predictions": preds,
                     "minutes": (time.perf_counter() - started) / 60}
        _keep(saved, run_dir, archive)
        runs[arm][seed] = saved["scores"]
        preds_by[arm][seed] = saved["predictions"]
        minutes[arm][seed] = round(saved["minutes"], 2)
        logger.info("augment %s seed %d: %s", arm, seed, saved["scores"])
        # an experiment of hours: what has finished, readable before augment_results.json is written at the end
        atomic_write_text(out / "augment_progress.json", json.dumps(
            {"planned": [f"{a} seed {s}" for s, a, _ in plan], **run_tables(runs, minutes)}, indent=1) + "\n")
    return runs, preds_by, minutes


def run_tables(runs: PerSeed, minutes: PerSeed) -> dict[str, dict[str, list]]:
    """Each arm's finished runs in seed order: their scores, seeds and minutes (results and progress files)."""
    return {"runs": {arm: list(by_seed.values()) for arm, by_seed in runs.items()},
            "run_seeds": {arm: list(by_seed) for arm, by_seed in runs.items()},
            "run_minutes": {arm: list(by_seed.values()) for arm, by_seed in minutes.items()}}
