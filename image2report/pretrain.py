"""Training entries for UAR's LSU image tokenizer and CMCRL's RadCARE pre-training.

``radloop train lsu``: the VQ image tokenizer (reconstruction + codebook losses); selection on
validation reconstruction L1. ``radloop train radcare``: the multiway transformer with the four
RadCARE objectives, each weighted in ``loss`` (0 switches one off); selection on the validation
total loss. Both share the data section and tokenizer handling of ``radloop train backbone``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from shared.backbone.train import BackboneDataConfig, prepare_pairs
from shared.data.dataset import collate_samples
from shared.training import TRAINERS, TrainConfig, Trainer, TrainResult, seed_everything

from .lsu import LSUS, build_lsu
from .radcare import RADCARES, RadCAREWeights, build_radcare

__all__ = ["LSUExperiment", "RadCAREExperiment", "train_lsu", "train_radcare"]


@dataclass
class LSUModelConfig:
    name: str = "lsu_small"
    dim: int = 128


@dataclass
class LSUExperiment:
    data: BackboneDataConfig = field(default_factory=BackboneDataConfig)
    model: LSUModelConfig = field(default_factory=LSUModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/lsu", max_steps=1000,
                                                                   learning_rate=5e-4, eval_every=250))


@dataclass
class RadCAREModelConfig:
    name: str = "radcare_small"
    mask_ratio: float = 0.85
    degrade_scale: int = 2


@dataclass
class RadCAREExperiment:
    data: BackboneDataConfig = field(default_factory=BackboneDataConfig)
    model: RadCAREModelConfig = field(default_factory=RadCAREModelConfig)
    loss: RadCAREWeights = field(default_factory=RadCAREWeights)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/radcare", max_steps=2000,
                                                                   learning_rate=5e-4, eval_every=250,
                                                                   warmup_steps=100))


def _val_loss(m: torch.nn.Module, val_loader: DataLoader, fn) -> float:
    total, n = 0.0, 0
    for batch in val_loader:
        total += float(fn(m, batch)["loss"]) * len(batch["report"])
        n += len(batch["report"])
    return total / max(n, 1)


@TRAINERS.register("lsu", help="UAR's Latent Space Unifier: the VQ image tokenizer",
                   meta={"experiment": LSUExperiment, "metric": "reconstruction L1"})
def train_lsu(cfg: LSUExperiment) -> TrainResult:
    data, mcfg, tcfg = cfg.data, cfg.model, cfg.train
    # seed before any model is built: its initial weights must not depend on what ran before in this process
    seed_everything(tcfg.seed)
    size = data.image_size or LSUS.config(mcfg.name)["image_size"]
    tokenizer, _, val_ds, loader = prepare_pairs(data, size, tcfg.seed)
    # the model at the data's size (a recipe's data.image_size may differ from the registered default)
    model = build_lsu(mcfg.name, len(tokenizer), mcfg.dim, image_size=size)
    model.tokenizer = tokenizer
    val_loader = DataLoader(val_ds, batch_size=data.batch_size, collate_fn=collate_samples)

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return m.reconstruction_loss(batch["images"][:, 0])

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        return {"recon_l1": _val_loss(m, val_loader, loss_fn) if len(val_ds) else float("nan")}

    trainer = Trainer(model, loader, loss_fn, tcfg, eval_fn=eval_fn, select_metric="recon_l1", select_mode="min",
                      save_extra=tokenizer.save_pretrained)
    return trainer.train()


@TRAINERS.register("radcare", help="CMCRL's RadCARE pre-training (restoration, MLM, postfix, alignment)",
                   meta={"experiment": RadCAREExperiment, "metric": "loss"})
def train_radcare(cfg: RadCAREExperiment) -> TrainResult:
    data, mcfg, weights, tcfg = cfg.data, cfg.model, cfg.loss, cfg.train
    # seed before any model is built: its initial weights must not depend on what ran before in this process
    seed_everything(tcfg.seed)
    size = data.image_size or RADCARES.config(mcfg.name)["image_size"]
    tokenizer, _, val_ds, loader = prepare_pairs(data, size, tcfg.seed)
    # the model at the data's size: its position embeddings are per patch of that size (a recipe's
    # data.image_size, 112 for the IU X-ray decoders, differs from radcare_base's registered 224)
    model = build_radcare(mcfg.name, len(tokenizer), mask_ratio=mcfg.mask_ratio, degrade_scale=mcfg.degrade_scale,
                          image_size=size)
    model.tokenizer = tokenizer
    val_loader = DataLoader(val_ds, batch_size=data.batch_size, collate_fn=collate_samples)

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        ids, _ = tokenizer.batch_encode(batch["report"])
        return m(batch["images"][:, 0], ids.to(batch["images"].device), weights)

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        torch.manual_seed(tcfg.seed)  # the same masks every evaluation
        return {"loss": _val_loss(m, val_loader, loss_fn) if len(val_ds) else float("nan")}

    trainer = Trainer(model, loader, loss_fn, tcfg, eval_fn=eval_fn, select_metric="loss", select_mode="min",
                      save_extra=tokenizer.save_pretrained)
    return trainer.train()
