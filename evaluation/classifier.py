"""The judge: a multilabel CXR classifier that scores generated images (mAUC) and gives a FID feature space.

``CXRClassifier`` is the suite's findings classifier (:class:`shared.backbone.classifier.FindingsClassifier`:
a timm tower and a linear head over the 14 CheXpert observations) in the judge's role: trained on
real images (``radloop train classifier``), it reads generated ones. It is never used to train or
initialise a generator (a decoder's ``init_visual_from`` refuses its folder), so a generator is
never scored by a judge that shares its weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from shared.backbone.classifier import ClassifierOutput, FindingsClassifier
from shared.data.transforms import PREPROCESS_FILE, PreprocessConfig
from shared.modeling import saved_class
from shared.registry import Registry
from shared.saved_settings import load_settings

__all__ = ["CXRClassifier", "ClassifierOutput", "CLASSIFIERS", "Judge", "build_classifier", "load_classifier"]


class CXRClassifier(FindingsClassifier):
    """The judge classifier (see the module docstring); arguments as :class:`FindingsClassifier`."""


#: the judge classifiers; ``*_tiny`` variants are for tests.
CLASSIFIERS = Registry("classifier", "judge classifiers: the mAUC of generated images and a FID feature space")
CLASSIFIERS.register("densenet121", CXRClassifier, help="DenseNet-121 (torchxrayvision's choice)", arch="densenet121")
CLASSIFIERS.register("resnet18", CXRClassifier, help="ResNet-18", arch="resnet18")
CLASSIFIERS.register("resnet50", CXRClassifier, help="ResNet-50", arch="resnet50")
CLASSIFIERS.register("classifier_small", CXRClassifier, help="the suite's CPU tower", arch="cxr_resnet_small")
CLASSIFIERS.register("classifier_tiny", CXRClassifier, help="for tests", arch="test_resnet")


def build_classifier(name: str, **overrides: Any) -> CXRClassifier:
    """A registered judge (``densenet121``, ``resnet18``, ``resnet50``, ``classifier_small``, ``classifier_tiny``)."""
    return CLASSIFIERS.build(name, **overrides)


def load_classifier(folder: str | Path) -> CXRClassifier:
    """A judge saved by ``radloop train classifier`` (a folder or ``zoo:NAME``); another model's folder is
    refused by name."""
    folder, _ = saved_class(folder, [CXRClassifier])
    model = CXRClassifier.from_pretrained(folder)
    # the pixels it was trained on travel with it (preprocessor_config.json), read by Judge
    model.preprocess = load_settings(folder, PREPROCESS_FILE, PreprocessConfig, image_size=model.config.image_size)
    return model


class Judge:
    """The judge's finding probabilities for images in [0, 1]: (N, 1, H, W) -> (N, 14), in batches.

    Makes the pixels the classifier was trained on (its saved preprocessing, ``preprocessor_config.json``:
    resized to the side it was trained at, or to its resize side and centre-cropped, then normalised as in
    training); the one way the suite scores images with the judge (image metrics, counterfactual flips, the demo).
    """

    def __init__(self, classifier: CXRClassifier, batch_size: int = 64) -> None:
        self.classifier = classifier.eval()
        self.preprocess = getattr(classifier, "preprocess", None) or PreprocessConfig(
            image_size=classifier.config.image_size)
        self.batch_size = batch_size

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (N, C, H, W) -> the classifier's one-channel input (its saved preprocessing)."""
        return self.preprocess.apply(images.float().mean(1, keepdim=True) if images.shape[1] != 1 else images)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str], batch_size: int = 64) -> Judge:
        return cls(load_classifier(folder), batch_size)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.classifier.parameters()).device
        return torch.cat([torch.sigmoid(self.classifier(self.prepare(b).to(device)).logits).cpu()
                          for b in images.split(self.batch_size)])
