"""A multilabel CXR classifier trained by the suite: the judge behind mAUC and a FID feature space.

``CXRClassifier`` wraps a timm backbone (DenseNet-121 or ResNet by default, any timm name
works) with a linear head over the 14 CheXpert observations. It trains from scratch or starts
from local weights (``init_weights``: a ``.safetensors``/``.pt`` state dict on disk, e.g. a
DenseNet checkpoint); nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from shared.labels import CHEXPERT_LABELS
from shared.modeling import load_state_dict_file
from shared.registry import Registry

logger = logging.getLogger(__name__)

__all__ = ["CXRClassifier", "ClassifierOutput", "CLASSIFIERS", "build_classifier", "load_state_dict_file"]

@dataclass
class ClassifierOutput(BaseOutput):
    """``logits``: (B, C); ``features``: (B, D) pooled features before the head."""

    logits: torch.Tensor
    features: torch.Tensor


class CXRClassifier(ModelMixin, ConfigMixin):
    """Multilabel classifier over grayscale CXRs.

    Args:
        arch: timm model name (``densenet121``, ``resnet18``, ``test_resnet`` for tests, ...).
        num_classes: outputs (14 CheXpert observations).
        in_chans: image channels (1 for CXR).
        image_size: the side it is trained at (recorded for users of the folder).
        drop_rate: dropout before the head.
        label_names: the class order of the logits.
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
    ) -> None:
        super().__init__()
        import timm

        import shared.backbone.towers  # noqa: F401  (registers the cxr_resnet_* towers in timm)

        if len(label_names) != num_classes:
            raise ValueError(f"{len(label_names)} label names for {num_classes} classes")
        if not timm.is_model(arch):
            raise ValueError(f"unknown timm architecture '{arch}' for the classifier")
        self.backbone = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans, drop_rate=drop_rate)
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


#: the judge classifiers; ``*_tiny`` variants are for tests.
CLASSIFIERS = Registry("classifier", "multilabel CXR classifiers: the mAUC judge and a FID feature space")
CLASSIFIERS.register("densenet121", CXRClassifier, help="DenseNet-121 (torchxrayvision's choice)", arch="densenet121")
CLASSIFIERS.register("resnet18", CXRClassifier, help="ResNet-18", arch="resnet18")
CLASSIFIERS.register("resnet50", CXRClassifier, help="ResNet-50", arch="resnet50")
CLASSIFIERS.register("classifier_small", CXRClassifier, help="the suite's CPU tower", arch="cxr_resnet_small")
CLASSIFIERS.register("classifier_tiny", CXRClassifier, help="for tests", arch="test_resnet")


def build_classifier(name: str, **overrides: Any) -> CXRClassifier:
    """A registered classifier (``densenet121``, ``resnet18``, ``resnet50``, ``classifier_tiny``, ...)."""
    return CLASSIFIERS.build(name, **overrides)
