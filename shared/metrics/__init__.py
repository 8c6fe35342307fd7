"""The metric primitives, one implementation each, at the lowest layer so every package may use them.

Trainers select checkpoints with them (image2report's validation CE-F1 and BLEU, the backbone's
retrieval precision, the tower pre-trainer's mAUC), ``evaluation`` builds its reports from them,
and benchmarks aggregate seeds with them. Nothing here imports a model.

* :mod:`.nlg`: BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap, R2Gen cleaning);
* :mod:`.clinical`: clinical efficacy (CE micro/macro/example P/R/F1, the CheXbert-5 subset);
* :mod:`.auroc`: multilabel AUROC (mAUC);
* :mod:`.image`: PSNR and the SSIM map of [0, 1] images;
* :mod:`.retrieval`: image -> report retrieval (Recall@K, label precision@K);
* :mod:`.stats`: seeds aggregated, paired bootstrap, approximate randomisation, mean CI.
"""

from .auroc import multilabel_auroc
from .clinical import binarize, clinical_efficacy, per_label_scores
from .image import psnr, ssim_map
from .nlg import align, java_status, nlg_scores
from .retrieval import retrieval_metrics
from .stats import aggregate_seeds, approximate_randomization, mean_ci, paired_bootstrap

__all__ = ["multilabel_auroc", "binarize", "clinical_efficacy", "per_label_scores", "align", "java_status",
           "nlg_scores", "psnr", "ssim_map", "retrieval_metrics", "aggregate_seeds", "approximate_randomization",
           "mean_ci", "paired_bootstrap"]
