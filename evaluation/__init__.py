"""Evaluation of what the generators make: report sets, image sets, the loop, and the judge.

* :mod:`.reports`: a set of generated reports (NLG, clinical efficacy, diversity) and its table;
* :mod:`.image_eval`, :mod:`.images`: generated images (FID/KID with the floor, conditional FID,
  MS-SSIM diversity, the judge's mAUC);
* :mod:`.loop`: round trips and counterfactual edits, with the generators passed in as callables;
* :mod:`.classifier`, :mod:`.train_classifier`: the judge classifier (``radloop train classifier``),
  which scores generated images and is never used to train a generator.

The metric primitives themselves (BLEU..CIDEr, CE, AUROC, retrieval, significance tests) live in
:mod:`shared.metrics`, so trainers of every package select checkpoints with the same code.
"""
