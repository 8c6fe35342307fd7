"""``radloop train report`` and ``radloop generate report``.

Training: teacher-forced cross-entropy on the training split; every ``eval_every`` steps the
validation split is decoded greedily and scored (clinical-efficacy micro-F1 with the labeler,
BLEU-4); the best validation checkpoint is kept. The test split is never looked at here:
``radloop generate report`` writes its reports and ``radloop evaluate reports`` scores them once.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import II
from torch.utils.data import DataLoader

from shared.data.config import TextDataConfig
from shared.data.dataset import ReportImageDataset, collate_samples
from shared.data.transforms import PreprocessConfig
from shared.metrics import clinical_efficacy, nlg_scores
from shared.text.labeler import ReportLabeler
from shared.text.tokenizer import ReportTokenizer
from shared.training import TRAINERS, TrainConfig, Trainer, TrainResult, seed_everything, training_loader

from .decoding import DecodingConfig
from .feature_cache import CachedFeatureDataset, GridFeatureCache, collate_cached
from .generator import ReportGenerator, save_inference_settings
from .models import build_report_model

logger = logging.getLogger(__name__)

__all__ = ["ReportExperiment", "train_report_model", "generate_reports"]


@dataclass
class ReportDataConfig(TextDataConfig):
    image_size: int = 64
    #: the side before cropping (R2Gen: 128 -> 112 crops)
    resize: int | None = None
    #: views per study (IU X-ray: 2, MIMIC-CXR: 1)
    max_views: int = 1
    #: validation studies decoded at each evaluation
    val_samples: int = 200
    #: folder where a frozen tower's grid features are kept between runs (None: computed once per run,
    #: in memory); see :mod:`image2report.feature_cache`
    feature_cache: str | None = None


@dataclass
class ReportModelConfig:
    name: str = "baseline"
    #: a RadCLIP / tower pre-trainer folder or zoo entry (``zoo:radclip_small``) whose CNN image tower
    #: initialises the visual extractor
    init_visual_from: str | None = None
    #: keep that image tower frozen (no gradients, BatchNorm statistics kept): its grid features are
    #: computed once for the training set and decoder steps no longer run the CNN
    freeze_visual: bool = False
    #: a trained LSU folder (``radloop train lsu``) whose VQ tokenizer UAR uses
    init_lsu_from: str | None = None
    #: a RadCARE-pretrained folder (``radloop train radcare``) whose vision path CMCRL fine-tunes
    init_radcare_from: str | None = None
    #: constructor arguments over the registered ones, e.g. ``model.options.use_vdm=false`` for an
    #: ablation row or ``model.options.num_layers=3``
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReportExperiment:
    data: ReportDataConfig = field(default_factory=ReportDataConfig)
    model: ReportModelConfig = field(default_factory=ReportModelConfig)
    #: one max_length: decoding stops where the tokenizer cuts the training reports (``data.max_length``)
    decoding: DecodingConfig = field(default_factory=lambda: DecodingConfig(max_length=II("..data.max_length")))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/report", max_steps=2000,
                                                                   learning_rate=5e-4, eval_every=250,
                                                                   warmup_steps=100))


def _dataset(data: ReportDataConfig, split: str, train: bool) -> ReportImageDataset:
    return ReportImageDataset(data.annotation, split, data.image_root, image_size=data.image_size,
                              resize=data.resize, train=train, max_views=data.max_views,
                              allow_outside_root=data.allow_outside_root)


@TRAINERS.register("report", help="report decoder (baseline, uar, cmcrl, ifnet)",
                   meta={"experiment": ReportExperiment, "metric": "CE micro-F1"})
def train_report_model(cfg: ReportExperiment) -> TrainResult:
    data, mcfg, tcfg = cfg.data, cfg.model, cfg.train
    # seed before any model is built: its initial weights must not depend on what ran before in this process
    seed_everything(tcfg.seed)
    train_ds, val_ds = _dataset(data, "train", True), _dataset(data, "val", False)
    if len(train_ds) == 0:
        raise ValueError(f"{data.annotation} has no training studies")
    preprocess = PreprocessConfig(data.image_size, data.resize)
    tokenizer = ReportTokenizer.fit(train_ds.reports, min_freq=data.min_freq, dataset=data.dataset,
                                    max_length=data.max_length)
    model = build_report_model(mcfg.name, len(tokenizer), **{"image_size": data.image_size, "max_views": data.max_views,
                                                             "max_length": data.max_length, **dict(mcfg.options)})
    model.tokenizer = tokenizer
    _init_parts(model, mcfg)
    loader = _train_loader(model, cfg, train_ds)
    val_idx = list(range(min(len(val_ds), data.val_samples)))
    labeler = ReportLabeler()
    # decoders that fuse label features (IFNet) learn from the labeler's positives of each report
    positives = {}
    if getattr(model, "uses_labels", False):
        positives = dict(zip(train_ds.reports, (labeler.label_batch(train_ds.reports) == 1).astype("float32"),
                             strict=True))

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        device = next(m.parameters()).device
        ids, _ = tokenizer.batch_encode(batch["report"])
        extra = {}
        if positives:
            extra["labels"] = torch.from_numpy(np.stack([positives[r] for r in batch["report"]])).to(device)
        if "features" in batch:  # a frozen tower's cached grids stand in for the images
            extra["features"] = batch["features"]
        out = m(batch.get("images"), ids.to(device), **extra)
        return {"loss": out.loss, **(out.aux or {})}

    def eval_val(m: torch.nn.Module) -> dict[str, float]:
        if not val_idx:
            return {"ce_micro_f1": float("nan")}
        # greedy (fast) with the recipe's other decoding settings, on the pixels inference will see
        gen = ReportGenerator(m, tokenizer, dataclasses.replace(cfg.decoding, num_beams=1), preprocess)
        samples = [val_ds[i] for i in val_idx]
        preds = gen.generate_for(samples)
        refs = [s["report"] for s in samples]
        return _val_scores(preds, refs, labeler, data.dataset)

    def save_extra(folder: Path) -> None:
        # what inference needs travels with the weights: tokenizer, decoding settings, preprocessing
        tokenizer.save_pretrained(folder)
        save_inference_settings(folder, cfg.decoding, preprocess)

    trainer = Trainer(model, loader, loss_fn, tcfg, eval_fn=eval_val, select_metric="ce_micro_f1", select_mode="max",
                      save_extra=save_extra)
    return trainer.train()


def _init_parts(model: torch.nn.Module, mcfg: ReportModelConfig) -> None:
    """Load the pre-trained parts the recipe names (``model.init_visual_from`` / ``init_lsu_from`` /
    ``init_radcare_from``); one that the model has no slot for is refused by name."""
    for option in ("init_visual_from", "init_lsu_from", "init_radcare_from"):
        source = getattr(mcfg, option)
        if source:
            if not hasattr(model, option):
                raise ValueError(f"model.{option} does not apply to report model '{mcfg.name}'")
            getattr(model, option)(source)


def _train_loader(model: torch.nn.Module, cfg: ReportExperiment, train_ds: ReportImageDataset) -> Any:
    """The training loader: the images, or with ``model.freeze_visual`` the frozen tower's cached grids."""
    data, tcfg = cfg.data, cfg.train
    if not cfg.model.freeze_visual:
        return training_loader(train_ds, data.batch_size, tcfg.seed, collate_samples, data.num_workers)
    model.freeze_visual()
    # one grid per study through the frozen tower, without augmentation, then no image is read again
    plain = _dataset(data, "train", False)
    cache = GridFeatureCache.build(model, plain, data.image_size, data.resize, data.feature_cache)
    return training_loader(CachedFeatureDataset(plain, cache), data.batch_size, tcfg.seed, collate_cached,
                           data.num_workers)


def _val_scores(preds: list[str], refs: list[str], labeler: ReportLabeler, dataset: str) -> dict[str, float]:
    """Validation CE micro-F1 (labeler on both sides, uncertain as negative) and BLEU-4.

    The same implementations ``radloop evaluate reports`` uses (:mod:`shared.metrics`); METEOR is
    left out of model selection (it needs a Java process per call).
    """
    ce = clinical_efficacy(labeler.label_batch(preds), labeler.label_batch(refs))
    bleu = nlg_scores(preds, refs, clean=dataset, meteor=False, only=("bleu",))
    return {"ce_micro_f1": ce["ce_micro_f1"], "bleu_4": float(bleu["bleu_4"]),
            "mean_length": float(np.mean([len(x.split()) for x in preds]))}


def generate_reports(checkpoint: str | ReportGenerator, annotation: str, split: str = "test",
                     num_beams: int | None = None, image_size: int | None = None, max_views: int | None = None,
                     image_root: str | None = None, allow_outside_root: bool = False,
                     decoding: DecodingConfig | None = None) -> dict[str, str]:
    """``{study id: generated report}`` for one split of an annotation (images under ``image_root``; see
    :class:`ReportImageDataset` for ``allow_outside_root``).

    ``checkpoint``: a report-model folder, ``zoo:NAME`` or a loaded :class:`ReportGenerator`. Images are made
    with the model's saved preprocessing (the pixels its checkpoint was chosen on; ``image_size`` replaces its
    crop side) and decoded with its saved settings (``decoding`` replaces them, ``num_beams`` the beams).
    """
    gen = checkpoint if isinstance(checkpoint, ReportGenerator) else ReportGenerator.from_pretrained(checkpoint)
    pre = gen.preprocess if image_size is None else dataclasses.replace(gen.preprocess, image_size=image_size,
                                                                        resize=None)
    ds = ReportImageDataset(annotation, split, image_root, allow_outside_root=allow_outside_root,
                            image_size=pre.image_size, max_views=max_views or gen.model.config.max_views,
                            transform=pre.transform(train=False))
    loader = DataLoader(ds, batch_size=32, collate_fn=collate_samples)
    out: dict[str, str] = {}
    for batch in loader:
        texts = gen.generate(batch["images"], num_beams=num_beams, decoding=decoding)
        out.update(zip(batch["study_id"], texts, strict=True))
    return out
