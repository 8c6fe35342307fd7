"""Where do the findings survive? Judges at several image sizes on the same SynthCXR world (issue 36, step 1).

    python benchmarks/judge_scale.py --sizes 64 96 128 --reuse 64=zoo:judge64 \
        --out benchmarks/results/judge_scale_synthcxr_cpu2.json

For each size S: the zoo's training data (``configs/zoo/data.yaml``, seed 0) rendered at S px, and two fresh test
sets rendered at S px (``configs/zoo/test_data.yaml``, seed 1001, 810 test studies; ``configs/zoo/rare_test_data.yaml``,
seed 1003, ~12,000 test studies with 100+ of each rare finding). The same patients, findings and reports at every
size: SynthCXR is a pure function of its config and the size only reaches the renderer. A judge is trained with the
``judge64`` recipe (``configs/zoo/judge64.yaml``: classifier_small, 2,500 steps, batch 64) at S px (or a trained one
is reused with ``--reuse S=PATH``) and its per-finding AUROC on the *real* test images of both sets is reported, with
the number of positives behind each value. The smallest size at which every finding reads >= ``--target`` on the
large set is named ``chosen_size``.

Everything lands under ``--runs`` (default ``runs/zoo``): ``data/synthcxr{S}[_test|_rare_test]`` and
``judge{S}/``; an interrupted run resumes (data generation and training both resume). The JSON is rewritten after
every size, so a partial run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from evaluation.train_classifier import ClassifierExperiment, load_classifier, predict_probs, train_classifier
from radloop.zoo import merge_results
from shared.backbone.train_tower import ClassifierDataConfig, classifier_dataset
from shared.config import load_config
from shared.data.dataset import collate_samples
from shared.labels import CHEXPERT_LABELS
from shared.metrics import multilabel_auroc
from synthcxr import SynthConfig, generate_dataset

logger = logging.getLogger("judge_scale")
ROOT = Path(__file__).resolve().parents[1]
DATA_SETS = {"train": "data.yaml", "test": "test_data.yaml", "rare_test": "rare_test_data.yaml"}


def render(recipe: str, size: int, out: Path, prevalence: dict[str, float] | None = None) -> Path:
    """Render the SynthCXR data set of ``configs/zoo/<recipe>`` at ``size`` px into ``out`` (resumes);
    ``prevalence`` raises findings' per-study probability over SynthCXR's defaults."""
    synth = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "zoo" / recipe).synth, resolve=True)
    extra = {"prevalence": {**SynthConfig().prevalence, **prevalence}} if prevalence else {}
    cfg = SynthConfig(**{**synth, "size": size, **extra})
    if not (out / "annotation.json").is_file():
        generate_dataset(out, cfg, progress=False)
    return out / "annotation.json"


def auroc_by_finding(scores: dict[str, float]) -> dict[str, float | None]:
    """``multilabel_auroc``'s per-finding AUROCs rounded to 4 places, None where undefined (one outcome only)."""
    auroc = {name: scores[f"auroc/{name}"] for name in CHEXPERT_LABELS}
    return {k: (None if math.isnan(v) else round(v, 4)) for k, v in auroc.items()}


def positives_by_finding(labels: np.ndarray) -> dict[str, int]:
    """Positive studies (label 1) per finding of labels (N, 14)."""
    return {name: int((labels[:, k] == 1).sum()) for k, name in enumerate(CHEXPERT_LABELS)}


def per_finding(model: Any, annotation: Path, size: int) -> dict[str, Any]:
    """The judge's AUROC per finding on the test split of ``annotation``, with positives per finding."""
    data = ClassifierDataConfig(annotation=str(annotation), image_size=size)
    loader = DataLoader(classifier_dataset(data, "test", False), batch_size=128, collate_fn=collate_samples)
    probs, labels = predict_probs(model, loader)
    scores = multilabel_auroc(probs, labels, CHEXPERT_LABELS)
    return {"studies": int(len(labels)), "mauc": round(scores["mauc"], 4), "auroc": auroc_by_finding(scores),
            "positives": positives_by_finding(labels)}


def judge(size: int, runs: Path, annotation: Path, reuse: str | None, overrides: list[str],
          tag: str = "") -> tuple[Any, dict]:
    """A judge at ``size`` px: ``reuse`` loaded as it is, else the judge64 recipe trained at ``size``."""
    if reuse:
        return load_classifier(reuse), {"judge": reuse, "trained_here": False}
    out = runs / f"judge{size}{tag}"
    cfg = load_config(ClassifierExperiment(), ROOT / "configs" / "zoo" / "judge64.yaml", [
        f"data.annotation={annotation}", f"data.image_size={size}", f"train.output_dir={out}", *overrides])
    start = time.perf_counter()
    result = train_classifier(OmegaConf.to_object(cfg))
    info = {"judge": str(out / "best"), "trained_here": True, "train_seconds": round(time.perf_counter() - start, 1),
            "steps": result.steps, "best_step": result.best_step, "best_val_mauc": round(result.best_metric, 4),
            "val_curve": [{k: round(v, 4) for k, v in h.items()} for h in result.history
                          if "val/mauc" in h]}
    return load_classifier(out / "best"), info


def smallest_passing(rows: dict[str, dict], key: str, target: float) -> int | None:
    """The smallest size whose every defined per-finding AUROC on ``key`` reaches ``target``."""
    passing = [int(s) for s, row in rows.items()
               if all(v is None or v >= target for v in row[key]["auroc"].values())]
    return min(passing) if passing else None


def zoo_rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The zoo scores of each reused ``zoo:`` judge: mAUC and per-finding AUROC on both test sets."""
    rows = {}
    for row in result["sizes"].values():
        if not str(row["judge"]).startswith("zoo:"):
            continue
        rows[row["judge"].removeprefix("zoo:")] = {
            "mauc_real_test": row["test"]["mauc"], "mauc_rare_test": row["rare_test"]["mauc"],
            "auroc_rare_test": row["rare_test"]["auroc"], "positives_rare_test": row["rare_test"]["positives"],
            "command": result["command"]}
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--reuse", nargs="*", default=[], metavar="SIZE=PATH",
                        help="a trained judge for a size instead of training one, e.g. 64=zoo:judge64")
    parser.add_argument("--runs", default="runs/zoo", type=Path)
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--train-prevalence", dest="train_prevalence", action="append", default=[], metavar="NAME=P",
                        help="train on data with this finding this common (repeatable; the test sets keep the "
                             "natural prevalence), e.g. Fracture=0.3: separates 'invisible at this size' from "
                             "'too rare to learn'; data and judges get the suffix _enriched")
    parser.add_argument("--judge-suffix", dest="judge_suffix", default="",
                        help="appended to the judges' folder names (judge{S}[_enriched]SUFFIX), so that a recipe "
                             "variant, e.g. model.global_pool=max, trains beside the others instead of resuming one")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: print only)")
    parser.add_argument("--zoo-results", dest="zoo_results", type=Path, default=None,
                        help="merge the scores of reused zoo judges (--reuse S=zoo:NAME) into this zoo scores file "
                             "(e.g. zoo/synthcxr128/scores.json), which their model cards quote")
    parser.add_argument("overrides", nargs="*", help="judge recipe overrides, e.g. train.max_steps=2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    reuse = dict(item.split("=", 1) for item in args.reuse)
    prevalence = {k: float(v) for k, v in (item.split("=", 1) for item in args.train_prevalence)}
    tag = "_enriched" if prevalence else ""
    result: dict[str, Any] = {
        "benchmark": "judge_scale_synthcxr", "machine": "2-core x86_64 CPU", "recipe": "configs/zoo/judge64.yaml",
        "data": {k: f"configs/zoo/{v}" for k, v in DATA_SETS.items()}, "target": args.target,
        "train_prevalence": prevalence, "recipe_overrides": args.overrides,
        "command": "python benchmarks/judge_scale.py " + " ".join(sys.argv[1:] if argv is None else argv), "sizes": {}}
    for size in args.sizes:
        data = args.runs / "data"
        paths = {name: render(recipe, size, data / (f"synthcxr{size}" + (tag if name == "train" else f"_{name}")),
                              prevalence if name == "train" else None)
                 for name, recipe in DATA_SETS.items() if name != "train" or str(size) not in reuse}
        model, info = judge(size, args.runs, paths.get("train", Path()), reuse.get(str(size)), args.overrides,
                            tag + args.judge_suffix)
        row = {**info, "test": per_finding(model, paths["test"], size),
               "rare_test": per_finding(model, paths["rare_test"], size)}
        result["sizes"][str(size)] = row
        logger.info("%d px: mAUC %.4f (test), %.4f (rare test); %s", size, row["test"]["mauc"],
                    row["rare_test"]["mauc"], row["rare_test"]["auroc"])
        result["chosen_size"] = smallest_passing(result["sizes"], "rare_test", args.target)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.zoo_results:
        merge_results("entries", zoo_rows(result), args.zoo_results)
    print(json.dumps(result, indent=1))
    # Which findings miss the target where, for the log reader.
    for size, row in result["sizes"].items():
        low = {k: v for k, v in row["rare_test"]["auroc"].items() if v is not None and v < args.target}
        logger.info("%s px below %.2f: %s", size, args.target, low or "none")


if __name__ == "__main__":
    main()
