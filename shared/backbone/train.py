"""``radloop train backbone``: contrastive training of RadCLIP on report-image pairs.

Config sections: ``data`` (annotation, sizes, tokenizer threshold), ``model`` (registry name or
JSON path, optional pretrained open_clip weights), ``train`` (:class:`shared.training.TrainConfig`).
The tokenizer is fitted on the training reports and saved with the model. Selection on the
validation split's image -> report label-matched precision@5.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.config import TextDataConfig
from ..data.dataset import ReportImageDataset, collate_samples
from ..labels import CHEXPERT_LABELS
from ..metrics.retrieval import retrieval_metrics
from ..text.labeler import ReportLabeler
from ..text.tokenizer import ReportTokenizer
from ..training import TRAINERS, TrainConfig, Trainer, TrainResult, seed_everything, training_loader
from .clip import RadCLIP, build_backbone, config_image_size, load_model_config
from .losses import LabelAwareClipLoss

logger = logging.getLogger(__name__)

__all__ = ["BackboneDataConfig", "BackboneModelConfig", "BackboneExperiment", "train_backbone", "embed_dataset",
           "contrastive_loss", "findings_loss", "prepare_pairs", "dataset_labels"]


@dataclass
class BackboneDataConfig(TextDataConfig):
    batch_size: int = 64
    #: the model config's image side when None
    image_size: int | None = None
    resize: int | None = None


@dataclass
class BackboneModelConfig:
    name: str = "radclip_small"
    pretrained: str | None = None
    #: weight of the same-findings soft targets (0 = plain CLIP loss); labels come from the
    #: report labeler on the training reports, never from a labels file
    label_weight: float = 0.0
    #: weight of the findings term: binary cross-entropy of the shared findings head on both
    #: embeddings against the labeler's positives of the paired report (0 = no head)
    findings_weight: float = 0.0


@dataclass
class BackboneExperiment:
    data: BackboneDataConfig = field(default_factory=BackboneDataConfig)
    model: BackboneModelConfig = field(default_factory=BackboneModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/backbone", max_steps=1500,
                                                                   learning_rate=1e-3, eval_every=250,
                                                                   checkpoint_every=500, warmup_steps=50))


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                     labels: torch.Tensor | None = None, label_weight: float = 0.0) -> torch.Tensor:
    """open_clip's ClipLoss, gathering features across processes when several run.

    With ``labels`` (B, 14) and ``label_weight > 0``: :class:`LabelAwareClipLoss` (same-findings
    pairs share the target mass instead of being pushed apart as negatives).
    """
    import open_clip

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    dist_kw = dict(gather_with_grad=distributed, rank=torch.distributed.get_rank() if distributed else 0,
                   world_size=torch.distributed.get_world_size() if distributed else 1)
    if labels is not None and label_weight > 0:
        return LabelAwareClipLoss(label_weight, **dist_kw)(image_embeds, text_embeds, logit_scale, labels)[
            "contrastive_loss"]
    return open_clip.ClipLoss(**dist_kw)(image_embeds, text_embeds, logit_scale, output_dict=True)["contrastive_loss"]


def findings_loss(image_logits: torch.Tensor, text_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean BCE of the findings head on both modalities; logits (B, L), labels (B, L), 1 = positive.

    Uncertain and unmentioned findings count as absent, as in the exact positive-set match that
    label-matched retrieval scores.
    """
    target = (labels == 1).to(image_logits.dtype)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    return (bce(image_logits, target) + bce(text_logits, target)) / 2


@torch.no_grad()
def embed_dataset(model: RadCLIP, dataset: ReportImageDataset,
                  batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image and report embeddings (N, E) of a dataset (first view)."""
    tok = model.tokenizer
    if tok is None:
        raise ValueError("the backbone has no tokenizer attached")
    images, texts = [], []
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples)
    device = next(model.parameters()).device
    for batch in loader:
        ids, _ = tok.batch_encode(batch["report"])
        out = model(batch["images"][:, 0].to(device), ids.to(device))
        images.append(out.image_embeds.cpu())
        texts.append(out.text_embeds.cpu())
    return torch.cat(images), torch.cat(texts)


def prepare_pairs(data: BackboneDataConfig, image_size: int, seed: int
                  ) -> tuple[ReportTokenizer, ReportImageDataset, ReportImageDataset, DataLoader]:
    """Build train/val datasets and the train loader; fit the tokenizer on the training reports."""
    train_ds = ReportImageDataset(data.annotation, "train", data.image_root, image_size=image_size, resize=data.resize,
                                  train=True, allow_outside_root=data.allow_outside_root)
    if len(train_ds) == 0:
        raise ValueError(f"{data.annotation} has no training studies")
    tokenizer = ReportTokenizer.fit(train_ds.reports, min_freq=data.min_freq, dataset=data.dataset,
                                    max_length=data.max_length)
    val_ds = ReportImageDataset(data.annotation, "val", data.image_root, image_size=image_size, resize=data.resize,
                                allow_outside_root=data.allow_outside_root)
    loader = training_loader(train_ds, data.batch_size, seed, collate_samples, data.num_workers)
    return tokenizer, train_ds, val_ds, loader


def dataset_labels(ds: ReportImageDataset) -> np.ndarray:
    """(N, 14) labels: the labels file when present, else the labeler on the reports."""
    if len(ds) and "labels" in ds[0]:
        return np.stack([ds[i]["labels"].numpy() for i in range(len(ds))])
    return ReportLabeler().label_batch(ds.reports)


@TRAINERS.register("backbone", help="contrastive vision-language backbone (RadCLIP)",
                   meta={"experiment": BackboneExperiment, "metric": "image->report label precision@5"})
def train_backbone(cfg: BackboneExperiment) -> TrainResult:
    data, mcfg, tcfg = cfg.data, cfg.model, cfg.train
    # seed before any model is built: its initial weights must not depend on what ran before in this process
    seed_everything(tcfg.seed)
    if mcfg.findings_weight < 0:
        raise ValueError(f"model.findings_weight must be >= 0, got {mcfg.findings_weight}")
    size = data.image_size or config_image_size(load_model_config(mcfg.name))
    tokenizer, train_ds, val_ds, loader = prepare_pairs(data, size, tcfg.seed)
    model = build_backbone(mcfg.name, tokenizer, num_labels=len(CHEXPERT_LABELS) if mcfg.findings_weight > 0 else 0)
    if mcfg.pretrained:
        model.load_open_clip_weights(mcfg.pretrained)
    if size != model.image_size:
        raise ValueError(f"data.image_size={size} but model '{mcfg.name}' takes {model.image_size} px images")
    val_labels = dataset_labels(val_ds)
    report_labels: dict[str, torch.Tensor] = {}
    if mcfg.label_weight > 0 or mcfg.findings_weight > 0:
        labeler = ReportLabeler()
        report_labels = {r: torch.as_tensor(v, dtype=torch.float32)
                         for r, v in zip(train_ds.reports, labeler.label_batch(train_ds.reports), strict=True)}

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        device = batch["images"].device
        ids, _ = tokenizer.batch_encode(batch["report"])
        out = m(batch["images"][:, 0], ids.to(device))
        labels = torch.stack([report_labels[r] for r in batch["report"]]).to(device) if report_labels else None
        loss = contrastive_loss(out.image_embeds, out.text_embeds, out.logit_scale, labels, mcfg.label_weight)
        logs = {"contrastive_loss": loss.detach(), "logit_scale": out.logit_scale.detach()}
        if mcfg.findings_weight > 0:
            findings = findings_loss(out.image_label_logits, out.text_label_logits, labels)
            logs["findings_loss"] = findings.detach()
            loss = loss + mcfg.findings_weight * findings
        return {"loss": loss, **logs}

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        if len(val_ds) < 2:
            return {"i2t_label_precision@5": float("nan")}
        img, txt = embed_dataset(m, val_ds)  # type: ignore[arg-type]
        return retrieval_metrics(img, txt, val_labels)

    trainer = Trainer(model, loader, loss_fn, tcfg, eval_fn=eval_fn, select_metric="i2t_label_precision@5",
                      select_mode="max", save_extra=tokenizer.save_pretrained)
    return trainer.train()
