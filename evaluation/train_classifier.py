"""Train the CXR classifier on real training images: ``radloop train classifier --config FILE``.

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

from shared.data.dataset import ReportImageDataset, collate_samples
from shared.labels import CHEXPERT_LABELS
from shared.metrics import multilabel_auroc
from shared.training import TrainConfig, Trainer, TrainResult, training_loader

from .classifier import CXRClassifier, build_classifier

logger = logging.getLogger(__name__)

__all__ = ["ClassifierDataConfig", "ClassifierModelConfig", "ClassifierExperiment", "train_classifier", "classifier_dataset",
           "predict_probs", "masked_bce"]


@dataclass
class ClassifierDataConfig:
    annotation: str = "data/synthcxr/annotation.json"
    image_size: int = 128
    resize: int | None = None
    labels: str | None = None
    label_source: str = "file"
    uncertain: str = "ignore"
    batch_size: int = 32
    num_workers: int = 0


@dataclass
class ClassifierModelConfig:
    name: str = "densenet121"
    #: timm architecture in place of the registered one (e.g. ``cxr_resnet_tiny``, to pre-train the
    #: tower of a report model that takes it through ``init_visual_from``)
    arch: str | None = None
    init_weights: str | None = None
    drop_rate: float = 0.0


@dataclass
class ClassifierExperiment:
    data: ClassifierDataConfig = field(default_factory=ClassifierDataConfig)
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/classifier", max_steps=2000,
                                                                   eval_every=250, checkpoint_every=500))


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
    ds = ReportImageDataset(data.annotation, split, image_size=data.image_size, resize=data.resize, train=train,
                            max_views=1, labels=data.labels)
    if data.label_source == "labeler":
        return _LabelerLabels(ds)
    if data.label_source != "file":
        raise ValueError(f"data.label_source must be 'file' or 'labeler', got {data.label_source!r}")
    if len(ds) and "labels" not in ds[0]:
        raise ValueError(f"{data.annotation} has no labels file; set data.labels or data.label_source=labeler")
    return ds


@torch.no_grad()
def predict_probs(model: CXRClassifier, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) over a loader of samples with 'images' (B, 1, C, H, W) and 'labels'."""
    model.eval()
    device = next(model.parameters()).device
    probs, labels = [], []
    for batch in loader:
        out = model(batch["images"][:, 0].to(device))
        probs.append(torch.sigmoid(out.logits).cpu().numpy())
        labels.append(batch["labels"].numpy())
    return np.concatenate(probs), np.concatenate(labels)


def train_classifier(cfg: ClassifierExperiment) -> TrainResult:
    """Train and select on validation mAUC; writes ``best/`` and ``final/`` under ``train.output_dir``."""
    data, mcfg, tcfg = cfg.data, cfg.model, cfg.train
    train_ds, val_ds = classifier_dataset(data, "train", True), classifier_dataset(data, "val", False)
    if len(train_ds) == 0:
        raise ValueError(f"{data.annotation} has no training studies")
    train_loader = training_loader(train_ds, data.batch_size, tcfg.seed, collate_samples, data.num_workers)
    val_loader = DataLoader(val_ds, batch_size=data.batch_size, collate_fn=collate_samples)
    model = build_classifier(mcfg.name, image_size=data.image_size, drop_rate=mcfg.drop_rate,
                             **({"arch": mcfg.arch} if mcfg.arch else {}))
    if mcfg.init_weights:
        model.load_backbone_weights(mcfg.init_weights)

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = m(batch["images"][:, 0])
        return {"loss": masked_bce(out.logits, batch["labels"], data.uncertain)}

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        if len(val_ds) == 0:
            return {"mauc": math.nan}
        probs, labels = predict_probs(m, val_loader)  # type: ignore[arg-type]
        return {k: v for k, v in multilabel_auroc(probs, labels, CHEXPERT_LABELS).items() if k == "mauc"}

    trainer = Trainer(model, train_loader, loss_fn, tcfg, eval_fn=eval_fn, select_metric="mauc", select_mode="max")
    result = trainer.train()
    logger.info("classifier: best validation mAUC %s at step %s", result.best_metric, result.best_step)
    return result


def load_classifier(folder: str | Path) -> CXRClassifier:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no classifier in {folder} (config.json missing)")
    config = CXRClassifier.load_config(folder)
    if config.get("_class_name") != "CXRClassifier":
        raise ValueError(f"{folder} holds a {config.get('_class_name')}, not a CXRClassifier")
    return CXRClassifier.from_pretrained(folder)
