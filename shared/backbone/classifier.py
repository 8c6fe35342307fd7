"""A multilabel findings classifier over a timm tower, and its tower pre-training role.

:class:`FindingsClassifier` wraps a timm backbone (the suite's ``cxr_resnet_*`` towers, DenseNet,
ResNet; any timm name works) with a linear head over the 14 CheXpert observations. It trains from
scratch or starts from local weights (``load_backbone_weights``); nothing is downloaded.

:class:`TowerPretrainer` is the role in this package: a findings classifier whose tower
initialises a report decoder's visual extractor (``init_visual_from``); ``radloop train tower``
trains it. The judge that scores generated images subclasses the same model in ``evaluation``
and is never used to train a generator.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from ..labels import CHEXPERT_LABELS
from ..modeling import RadLoopModel, load_state_dict_file
from ..registry import Registry
from . import towers  # noqa: F401  (registers the cxr_resnet_* towers in timm)

logger = logging.getLogger(__name__)

__all__ = ["FindingsClassifier", "TowerPretrainer", "ClassifierOutput", "TOWER_PRETRAINERS", "build_tower_pretrainer"]


@dataclass
class ClassifierOutput(BaseOutput):
    """``logits``: (B, C); ``features``: (B, D) pooled features before the head."""

    logits: torch.Tensor
    features: torch.Tensor


class FindingsClassifier(RadLoopModel):
    """Multilabel findings classifier over grayscale CXRs: a timm tower and a linear head.

    The base of two roles that never mix: :class:`TowerPretrainer` (here) pre-trains an image tower
    for the generators; the judge (``evaluation.classifier.CXRClassifier``) scores their output.

    Args:
        arch: timm model name (``densenet121``, ``resnet18``, ``test_resnet`` for tests, ...).
        num_classes: outputs (14 CheXpert observations).
        in_chans: image channels (1 for CXR).
        image_size: the side it is trained at (recorded for users of the folder).
        drop_rate: dropout before the head.
        label_names: the class order of the logits.
        global_pool: timm's pooling of the last feature map (``avg``, ``max``, ``avgmax``): a finding that
            covers a few cells of the grid (a rib fracture) is diluted by ``avg``; ``max`` keeps its peak.
    """

    @register_to_config
    def __init__(
        self,
        arch: str = "densenet121",
        num_classes: int = len(CHEXPERT_LABELS),
        in_chans: int = 1,
        image_size: int = 128,
        drop_rate: float = 0.0,
        label_names: tuple[str, ...] = CHEXPERT_LABELS,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        import timm

        if len(label_names) != num_classes:
            raise ValueError(f"{len(label_names)} label names for {num_classes} classes")
        if not timm.is_model(arch):
            raise ValueError(f"unknown timm architecture '{arch}' for the classifier")
        if global_pool not in ("avg", "max", "avgmax"):
            raise ValueError(f"global_pool must be 'avg', 'max' or 'avgmax', got {global_pool!r}")
        self.backbone = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans, drop_rate=drop_rate,
                                          global_pool=global_pool)
        self.head = nn.Linear(self.backbone.num_features, num_classes)

    @property
    def num_features(self) -> int:
        return int(self.backbone.num_features)

    def forward(self, images: torch.Tensor) -> ClassifierOutput:
        """images: (B, in_chans, H, W), normalised like the training data ([-1, 1] by default)."""
        # 1. pooled backbone features
        features = self.backbone(images)
        # 2. linear head over the observations
        return ClassifierOutput(logits=self.head(features), features=features)

    def load_backbone_weights(self, path: str | os.PathLike[str]) -> None:
        """Initialise the backbone from a local state dict; keys that do not fit are reported."""
        state = load_state_dict_file(path)
        state = {k.removeprefix("backbone.").removeprefix("module."): v for k, v in state.items()}
        own = self.backbone.state_dict()
        fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not fitting:
            raise ValueError(f"no tensor of {path} fits the {self.config.arch} backbone")
        self.backbone.load_state_dict(fitting, strict=False)
        logger.info("loaded %d/%d backbone tensors from %s (%d skipped)", len(fitting), len(own), path,
                    len(state) - len(fitting))


class TowerPretrainer(FindingsClassifier):
    """A findings classifier trained to pre-train its tower for a generator (``radloop train tower``).

    Its own class name in ``config.json`` tells a decoder's ``init_visual_from`` that this tower may
    initialise a generator; a judge's folder is refused there.
    """


#: tower pre-trainers, one per suite tower; ``*_tiny`` for tests.
TOWER_PRETRAINERS = Registry("tower_pretrainer", "findings classifiers that pre-train a decoder's image tower")
TOWER_PRETRAINERS.register("tower_pretrainer_tiny", TowerPretrainer, help="for tests; tower cxr_resnet_tiny",
                           arch="cxr_resnet_tiny", image_size=64)
TOWER_PRETRAINERS.register("tower_pretrainer_small", TowerPretrainer, help="CPU recipe; tower cxr_resnet_small",
                           arch="cxr_resnet_small", image_size=64)
TOWER_PRETRAINERS.register("tower_pretrainer_base", TowerPretrainer, help="GPU; tower cxr_resnet_base",
                           arch="cxr_resnet_base", image_size=224)


def build_tower_pretrainer(name: str, **overrides: Any) -> TowerPretrainer:
    return TOWER_PRETRAINERS.build(name, **overrides)
