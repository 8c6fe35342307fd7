"""Train the CXR classifier on SynthCXR with the CPU recipe and report its test mAUC on real images.

    python benchmarks/classifier_synth.py [--data runs/bench/synthcxr] [--steps 300] [--model classifier_small] \
        [KEY=VALUE ...]   (config overrides, e.g. train.channels_last=true)

This is the judge that scores generated images (mAUC); its mAUC on *real* test images is the
ceiling generated images can reach. It also gives a supervised reference for the backbone's
label-matched retrieval (issue 4): on the validation split, the fraction of images whose whole
positive-finding set it gets right (threshold 0.5), and the image -> report precision@5 that its
probabilities would reach against a perfect text side (reports embedded as their true label vectors).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from evaluation.train_classifier import ClassifierExperiment, load_classifier, predict_probs, train_classifier
from shared.backbone.train_tower import classifier_dataset
from shared.config import load_config
from shared.data.dataset import collate_samples
from shared.labels import CHEXPERT_LABELS
from shared.metrics import multilabel_auroc, retrieval_metrics
from synthcxr import SynthConfig, generate_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/bench/synthcxr")
    parser.add_argument("--out", default="runs/bench/classifier")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--model", default="classifier_small")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("overrides", nargs="*", help="config overrides applied last, e.g. train.learning_rate=0.002")
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "annotation.json").is_file():
        generate_dataset(data, SynthConfig(patients=1000, studies_per_patient=3, size=128), overwrite=True)
    cfg = load_config(ClassifierExperiment(), None, [
        f"data.annotation={data / 'annotation.json'}", f"data.image_size={args.image_size}",
        f"model.name={args.model}", f"train.max_steps={args.steps}", f"train.output_dir={args.out}",
        "data.batch_size=64", "train.eval_every=100", "train.checkpoint_every=300", "train.progress=false",
        *args.overrides,
    ])
    start = time.perf_counter()
    result = train_classifier(OmegaConf.to_object(cfg))
    seconds = time.perf_counter() - start
    model = load_classifier(Path(args.out) / "best")
    test = DataLoader(classifier_dataset(cfg.data, "test", False), batch_size=64, collate_fn=collate_samples)
    probs, labels = predict_probs(model, test)
    scores = multilabel_auroc(probs, labels, CHEXPERT_LABELS)
    val = DataLoader(classifier_dataset(cfg.data, "val", False), batch_size=64, collate_fn=collate_samples)
    val_probs, val_labels = predict_probs(model, val)
    positive = val_labels == 1
    unit = torch.nn.functional.normalize
    # Both sides centred at 0.5 so that "absent" is a direction too, then unit-normed like embeddings.
    retrieval = retrieval_metrics(unit(torch.as_tensor(val_probs - 0.5), dim=1),
                                  unit(torch.as_tensor(positive - 0.5), dim=1), val_labels, ks=(5,))
    print(json.dumps({
        "benchmark": "classifier_synthcxr", "model": args.model, "image_size": args.image_size, "steps": result.steps,
        "overrides": args.overrides,
        "train_seconds": round(seconds, 1), "best_val_mauc": result.best_metric, "best_step": result.best_step,
        "test_mauc_real_images": scores["mauc"],
        "test_auroc": {k.split("/", 1)[1]: round(v, 4) for k, v in scores.items() if k.startswith("auroc/")},
        "val_exact_set_accuracy": float(((val_probs > 0.5) == positive).all(1).mean()),
        "val_i2t_label_precision@5_with_perfect_text": retrieval["i2t_label_precision@5"],
        "val_label_chance": retrieval["label_chance"],
    }, indent=1))


if __name__ == "__main__":
    main()
