"""Train a findings classifier: the tower pre-trainer here (``radloop train tower``), the judge in
``evaluation.train_classifier`` (``radloop train classifier``); both run :func:`fit_classifier`.

Config sections: ``data`` (annotation, sizes, where labels come from), ``model`` (registry name,
local initial weights) and ``train`` (:class:`shared.training.TrainConfig`). Labels come from the
labels file beside the annotation (SynthCXR's ``labels.csv``) or, with ``label_source=labeler``,
from the rule-based labeler run on the training reports. Uncertain labels are ignored in the loss
by default. The best checkpoint is chosen on validation mAUC.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.config import DataConfig
from ..data.dataset import ReportImageDataset, collate_samples
from ..data.transforms import PREPROCESS_FILE, PreprocessConfig
from ..labels import CHEXPERT_LABELS
from ..metrics import multilabel_auroc
from ..registry import Registry
from ..saved_settings import save_settings
from ..training import TRAINERS, TrainConfig, Trainer, TrainResult, seed_everything, training_loader
from .classifier import TOWER_PRETRAINERS, FindingsClassifier

logger = logging.getLogger(__name__)

__all__ = ["ClassifierDataConfig", "ClassifierModelConfig", "ClassifierExperiment", "TowerExperiment", "fit_classifier",
           "train_tower", "classifier_dataset", "predict_probs", "masked_bce"]


@dataclass
class ClassifierDataConfig(DataConfig):
    image_size: int = 128
    resize: int | None = None
    #: a labels CSV; default: ``labels.csv`` beside the annotation
    labels: str | None = None
    #: ``file`` (the labels file) or ``labeler`` (the report labeler on the training reports)
    label_source: str = "file"
    #: what an uncertain label does in the loss: ``ignore``, ``positive`` or ``negative``
    uncertain: str = "ignore"
    #: what a finding the report does not mention (NaN) is, in the loss and in validation: ``ignore`` or
    #: ``negative``. The labeler leaves a finding blank unless the report names it, and some findings are never
    #: negated in reports (atelectasis, support devices): ignored, they have positives only and nothing to learn.
    unmentioned: str = "ignore"


@dataclass
class ClassifierModelConfig:
    #: a registry name (``tower_pretrainer_*`` for ``radloop train tower``, a judge's for ``radloop
    #: train classifier``)
    name: str = "densenet121"
    #: timm architecture in place of the registered one
    arch: str | None = None
    init_weights: str | None = None
    drop_rate: float = 0.0
    #: pooling of the last feature map: ``avg``, ``max`` or ``avgmax`` (see FindingsClassifier)
    global_pool: str = "avg"


@dataclass
class ClassifierExperiment:
    data: ClassifierDataConfig = field(default_factory=ClassifierDataConfig)
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/classifier", max_steps=2000,
                                                                   eval_every=250, checkpoint_every=500))


@dataclass
class TowerExperiment(ClassifierExperiment):
    """A tower pre-training run: labels from the labeler by default (no image annotations needed)."""

    data: ClassifierDataConfig = field(default_factory=lambda: ClassifierDataConfig(image_size=64,
                                                                                    label_source="labeler"))
    model: ClassifierModelConfig = field(default_factory=lambda: ClassifierModelConfig(name="tower_pretrainer_small"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/tower", max_steps=400,
                                                                   eval_every=100, checkpoint_every=200))


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, uncertain: str = "ignore") -> torch.Tensor:
    """BCE over labels 1/0; NaN is ignored, -1 is ignored or mapped to 1/0 per ``uncertain``."""
    target = labels.clone()
    if uncertain == "positive":
        target[target == -1] = 1.0
    elif uncertain == "negative":
        target[target == -1] = 0.0
    elif uncertain != "ignore":
        raise ValueError(f"uncertain must be 'ignore', 'positive' or 'negative', got {uncertain!r}")
    mask = (target == 0) | (target == 1)
    if not mask.any():
        return logits.sum() * 0.0
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[mask], target[mask])


class _UnmentionedNegative(torch.utils.data.Dataset):
    """Wrap a labelled dataset: a finding left blank (NaN, not mentioned) reads as absent (0)."""

    def __init__(self, base: torch.utils.data.Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i]
        return {**item, "labels": torch.nan_to_num(item["labels"], nan=0.0)}


class _LabelerLabels(torch.utils.data.Dataset):
    """Wrap a dataset and attach labels computed once from its reports by the labeler."""

    def __init__(self, base: ReportImageDataset) -> None:
        from shared.text.labeler import ReportLabeler

        self.base = base
        self.labels = torch.from_numpy(ReportLabeler().label_batch(base.reports)).float()

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.base[i], "labels": self.labels[i]}


def classifier_dataset(data: ClassifierDataConfig, split: str, train: bool) -> torch.utils.data.Dataset:
    ds = ReportImageDataset(data.annotation, split, data.image_root, image_size=data.image_size, resize=data.resize,
                            train=train, max_views=1, labels=data.labels, allow_outside_root=data.allow_outside_root)
    if data.unmentioned not in ("ignore", "negative"):
        raise ValueError(f"data.unmentioned must be 'ignore' or 'negative', got {data.unmentioned!r}")
    labelled: torch.utils.data.Dataset = ds
    if data.label_source == "labeler":
        labelled = _LabelerLabels(ds)
    elif data.label_source != "file":
        raise ValueError(f"data.label_source must be 'file' or 'labeler', got {data.label_source!r}")
    elif len(ds) and "labels" not in ds[0]:
        raise ValueError(f"{data.annotation} has no labels file; set data.labels or data.label_source=labeler")
    return _UnmentionedNegative(labelled) if data.unmentioned == "negative" else labelled


@torch.no_grad()
def predict_probs(model: FindingsClassifier, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) over a loader of samples with 'images' (B, 1, C, H, W) and 'labels'."""
    model.eval()
    device = next(model.parameters()).device
    probs, labels = [], []
    for batch in loader:
        out = model(batch["images"][:, 0].to(device))
        probs.append(torch.sigmoid(out.logits).cpu().numpy())
        labels.append(batch["labels"].numpy())
    return np.concatenate(probs), np.concatenate(labels)


def fit_classifier(cfg: ClassifierExperiment, registry: Registry) -> TrainResult:
    """Train ``registry``'s model ``cfg.model.name`` and select on validation mAUC; writes ``best/`` and
    ``final/`` under ``train.output_dir``."""
    data, mcfg, tcfg = cfg.data, cfg.model, cfg.train
    # seed before any model is built: its initial weights must not depend on what ran before in this process
    seed_everything(tcfg.seed)
    train_ds, val_ds = classifier_dataset(data, "train", True), classifier_dataset(data, "val", False)
    if len(train_ds) == 0:
        raise ValueError(f"{data.annotation} has no training studies")
    train_loader = training_loader(train_ds, data.batch_size, tcfg.seed, collate_samples, data.num_workers)
    val_loader = DataLoader(val_ds, batch_size=data.batch_size, collate_fn=collate_samples)
    model = registry.build(mcfg.name, image_size=data.image_size, drop_rate=mcfg.drop_rate,
                           global_pool=mcfg.global_pool, **({"arch": mcfg.arch} if mcfg.arch else {}))
    if mcfg.init_weights:
        model.load_backbone_weights(mcfg.init_weights)

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = m(batch["images"][:, 0])
        return {"loss": masked_bce(out.logits, batch["labels"], data.uncertain)}

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        if len(val_ds) == 0:
            return {"mauc": math.nan}
        probs, labels = predict_probs(m, val_loader)  # type: ignore[arg-type]
        # every finding's AUROC goes to the history too: the learning curve of a rare finding is what says
        # whether it is still being learned
        scores = multilabel_auroc(probs, labels, CHEXPERT_LABELS)
        return {k: v for k, v in scores.items()
                if k == "mauc" or (k.startswith("auroc/") and not math.isnan(v))}

    def save_extra(folder: Path) -> None:
        # the pixels it was trained and selected on travel with it (the judge reads them back)
        save_settings(folder, PREPROCESS_FILE, PreprocessConfig(data.image_size, data.resize))

    trainer = Trainer(model, train_loader, loss_fn, tcfg, eval_fn=eval_fn, select_metric="mauc", select_mode="max",
                      save_extra=save_extra)
    result = trainer.train()
    logger.info("%s: best validation mAUC %s at step %s", registry.family, result.best_metric, result.best_step)
    return result


@TRAINERS.register("tower", help="image tower pre-trained as a findings classifier (for init_visual_from)",
                   meta={"experiment": TowerExperiment, "metric": "mAUC"})
def train_tower(cfg: TowerExperiment) -> TrainResult:
    """Pre-train a decoder's image tower as a findings classifier (a :class:`TowerPretrainer`)."""
    return fit_classifier(cfg, TOWER_PRETRAINERS)

