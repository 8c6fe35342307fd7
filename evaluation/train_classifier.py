"""Train the judge classifier on real training images: ``radloop train classifier --config FILE``.

Config sections: ``data`` (annotation, sizes, where labels come from), ``model`` (registry name,
local initial weights) and ``train`` (:class:`shared.training.TrainConfig`). Labels come from the
labels file beside the annotation (SynthCXR's ``labels.csv``) or, with ``label_source=labeler``,
from the rule-based labeler run on the training reports. Uncertain labels are ignored in the loss
by default. The best checkpoint is chosen on validation mAUC. The loop is the tower pre-trainer's
(:func:`shared.backbone.train_tower.fit_classifier`); only the registry, hence the saved class, differs.
"""

from __future__ import annotations

from shared.backbone.train_tower import (
    ClassifierDataConfig,
    ClassifierExperiment,
    ClassifierModelConfig,
    fit_classifier,
    predict_probs,
)
from shared.training import TRAINERS, TrainResult

from .classifier import CLASSIFIERS, load_classifier

__all__ = ["ClassifierDataConfig", "ClassifierModelConfig", "ClassifierExperiment", "train_classifier",
           "load_classifier", "predict_probs"]


@TRAINERS.register("classifier",
                   help="the judge: multilabel CXR classifier (mAUC of generated images, a FID feature space)",
                   meta={"experiment": ClassifierExperiment, "metric": "mAUC"})
def train_classifier(cfg: ClassifierExperiment) -> TrainResult:
    """Train a judge (a :class:`evaluation.classifier.CXRClassifier`); see :func:`fit_classifier`."""
    return fit_classifier(cfg, CLASSIFIERS)
