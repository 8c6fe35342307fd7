"""Train and score the four report decoders on SynthCXR with their CPU recipes, over seeds. Prints JSON.

    python benchmarks/report_synth.py --data runs/bench/synthcxr64 --out-dir runs/bench/reports \
        [--models baseline uar cmcrl ifnet] [--seeds 0 1 2] [--json benchmarks/results/report_synth_cpu2.json]

For every model the recipe is ``configs/synth/<model>.yaml`` (UAR first trains its tokenizer with
``configs/synth/lsu.yaml``, CMCRL its encoder with ``configs/synth/radcare.yaml``, ``ifnet_pt`` and
``baseline_pt`` (IFNet / the baseline on a pre-trained tower) their image tower as a findings classifier
with ``configs/synth/ifnet_tower.yaml``, ``ifnet_pt_small`` with ``configs/synth/ifnet_tower_small.yaml``;
once, at the first seed, and their time is added to every seed's recipe time). Selection uses validation only; the
test split is decoded once per run, greedy and with beam 3, and scored with
``evaluation.reports.evaluate_reports`` (labeler on both sides) plus clinical efficacy against the
generator's ground-truth image labels (``labels.csv``), the issue's target. Beside the models: the
"copy the most common training report" floor. Finished runs are kept in ``<out-dir>/<model>_s<seed>
/scores.json`` and reused, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from evaluation.reports import evaluate_reports
from image2report.generator import ReportGenerator
from image2report.pretrain import LSUExperiment, RadCAREExperiment, train_lsu, train_radcare
from image2report.train import ReportExperiment, train_report_model
from shared.backbone.train_tower import TowerExperiment, train_tower
from shared.config import load_config
from shared.data.dataset import ReportImageDataset
from shared.io import read_json
from shared.labels import CHEXPERT_LABELS
from shared.metrics import aggregate_seeds, clinical_efficacy
from shared.text.labeler import ReportLabeler

ROOT = Path(__file__).resolve().parents[1]
PRETRAINING = {"uar": ("lsu", LSUExperiment, train_lsu, "init_lsu_from"),
               "cmcrl": ("radcare", RadCAREExperiment, train_radcare, "init_radcare_from"),
               "ifnet_pt": ("ifnet_tower", TowerExperiment, train_tower, "init_visual_from"),
               "baseline_pt": ("ifnet_tower", TowerExperiment, train_tower, "init_visual_from"),
               "ifnet_pt_small": ("ifnet_tower_small", TowerExperiment, train_tower, "init_visual_from")}
#: report quality beside CE and NLG (shared.metrics.report_quality)
QUALITY_KEYS = ["self_contradiction_rate", "restatement_rate", "unfinished_rate", "repeated_sentence_report_rate",
                "novel_sentence_rate"]
KEYS = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "ce_micro_f1", "ce_macro_f1",
        "truth_ce_micro_f1", "truth_ce_macro_f1", "unique_report_rate", *QUALITY_KEYS]


def truth_labels(data: Path, ids: list[str]) -> np.ndarray:
    """The generator's image labels (N, 14) for ``ids`` from SynthCXR's labels.csv."""
    with open(data / "labels.csv", newline="") as f:
        rows = {r["id"]: [float(r[n]) for n in CHEXPERT_LABELS] for r in csv.DictReader(f)}
    return np.array([rows[i] for i in ids])


def score(preds: dict[str, str], refs: dict[str, str], truth: np.ndarray, labeler: ReportLabeler,
          training_reports: list[str] | None = None) -> dict[str, float]:
    ids = sorted(refs)
    out = evaluate_reports(preds, refs, labeler=labeler, training_reports=training_reports)
    vs_truth = clinical_efficacy(labeler.label_batch([preds[i] for i in ids]), truth)
    out.update({f"truth_{k}": v for k, v in vs_truth.items() if k.startswith(("ce_micro", "ce_macro_f1"))})
    return out


def pretrain(kind: str, data: Path, out_dir: Path, seed: int, extra: list[str]) -> tuple[Path, float]:
    name, schema, fn, _ = PRETRAINING[kind]
    run = out_dir / f"{name}_s{seed}"
    if (run / "best" / "config.json").is_file():
        return run / "best", float(read_json(run / "bench_time.json")["seconds"])
    cfg = load_config(schema(), ROOT / "configs" / "synth" / f"{name}.yaml",
                      [f"data.annotation={data / 'annotation.json'}", f"train.output_dir={run}",
                       f"train.seed={seed}", "train.progress=false", *extra])
    t0 = time.perf_counter()
    fn(OmegaConf.to_object(cfg))
    seconds = time.perf_counter() - t0
    (run / "bench_time.json").write_text(json.dumps({"seconds": seconds}))
    return run / "best", seconds


def run_one(model: str, seed: int, data: Path, out_dir: Path, pretrained: tuple[Path, float] | None,
            test: list[dict[str, Any]], refs: dict[str, str], truth: np.ndarray, labeler: ReportLabeler,
            extra: list[str], tag: str = "") -> dict[str, Any]:
    run = out_dir / f"{model}{tag}_s{seed}"
    if (run / "scores.json").is_file():
        return read_json(run / "scores.json")
    overrides = [f"data.annotation={data / 'annotation.json'}", f"train.output_dir={run}", f"train.seed={seed}",
                 "train.progress=false", *extra]
    if pretrained is not None:
        overrides.append(f"model.{PRETRAINING[model][3]}={pretrained[0]}")
    cfg = OmegaConf.to_object(load_config(ReportExperiment(), ROOT / "configs" / "synth" / f"{model}.yaml", overrides))
    t0 = time.perf_counter()
    result = train_report_model(cfg)
    train_s = time.perf_counter() - t0
    gen = ReportGenerator.from_pretrained(run / "best")
    images = torch.stack([s["images"] for s in test])
    out: dict[str, Any] = {"model": cfg.model.name, "seed": seed, "steps": result.steps, "best_step": result.best_step,
                           "val_ce_micro_f1": result.best_metric, "train_seconds": round(train_s, 1),
                           "pretrain_seconds": round(pretrained[1], 1) if pretrained else 0.0,
                           "params_m": round(sum(p.numel() for p in gen.model.parameters()) / 1e6, 2)}
    out["recipe_seconds"] = round(out["train_seconds"] + out["pretrain_seconds"], 1)
    ids = [s["study_id"] for s in test]
    for mode, beams in (("greedy", 1), ("beam3", 3)):
        t0 = time.perf_counter()
        texts = gen.generate(images, num_beams=beams)
        out[f"{mode}_reports_per_s"] = round(len(texts) / (time.perf_counter() - t0), 2)
        preds = dict(zip(ids, texts, strict=True))
        (run / f"test_{mode}.json").write_text(json.dumps(preds, indent=1))
        training = [e["report"] for e in read_json(data / "annotation.json")["train"]]
        out[mode] = {k: round(float(v), 4) for k, v in score(preds, refs, truth, labeler, training).items()
                     if isinstance(v, (int, float))}
    (run / "scores.json").write_text(json.dumps(out, indent=1))
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs],
                           "recipe_seconds_mean": round(float(np.mean([r["recipe_seconds"] for r in runs])), 1)}
    for mode in ("greedy", "beam3"):
        stats = aggregate_seeds([{k: r[mode][k] for k in KEYS} for r in runs])
        out[mode] = {k: {"mean": round(v["mean"], 4), "std": round(v["std"], 4)} for k, v in stats.items()}
        out[f"{mode}_reports_per_s"] = round(float(np.mean([r[f"{mode}_reports_per_s"] for r in runs])), 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a SynthCXR folder (annotation.json, labels.csv)")
    p.add_argument("--out-dir", default="runs/bench/reports")
    p.add_argument("--models", nargs="+", default=["baseline", "uar", "cmcrl", "ifnet"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--steps", type=int, help="override every recipe's max_steps (smoke runs)")
    p.add_argument("--limit-test", dest="limit_test", type=int, help="score the first N test studies only (smoke runs)")
    p.add_argument("--override", nargs="*", default=[], metavar="key=value",
                   help="config overrides of the decoder runs (not the pre-training), e.g. model.options.grid_size=4")
    p.add_argument("--tag", default="", help="suffix of the run folders, so variants share one --out-dir and "
                                              "its pre-trained towers")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data, out_dir = Path(args.data), Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labeler = ReportLabeler()
    ann = read_json(data / "annotation.json")
    test_ds = ReportImageDataset(data / "annotation.json", "test", image_size=64, train=False)
    test = [test_ds[i] for i in range(min(len(test_ds), args.limit_test or len(test_ds)))]
    refs = {s["study_id"]: s["report"] for s in test}
    extra = [f"train.max_steps={args.steps}", f"train.eval_every={args.steps}"] if args.steps else []
    ids = [s["study_id"] for s in test]
    truth = truth_labels(data, ids)
    most_common = Counter(e["report"] for e in ann["train"]).most_common(1)[0][0]
    floor = {k: round(float(v), 4) for k, v in score({i: most_common for i in ids}, refs, truth, labeler,
                                                      [e["report"] for e in ann["train"]]).items()
             if isinstance(v, (int, float))}

    table: dict[str, Any] = {}
    per_run: list[dict[str, Any]] = []
    for model in args.models:
        shared_pretraining = pretrain(model, data, out_dir, args.seeds[0], extra) if model in PRETRAINING else None
        runs = [run_one(model, seed, data, out_dir, shared_pretraining, test, refs, truth, labeler,
                        [*extra, *args.override], args.tag) for seed in args.seeds]
        per_run.extend(runs)
        table[model + args.tag] = summarise(runs)
    result = {
        "benchmark": "report_generation_synthcxr",
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "data": f"{data} ({len(ann['train'])} train / {len(ann['val'])} val / {len(ids)} test studies)",
        "command": "python benchmarks/report_synth.py --data " + str(data) + " --models " + " ".join(args.models)
                   + " --seeds " + " ".join(map(str, args.seeds))
                   + (" --override " + " ".join(args.override) if args.override else "")
                   + (f" --tag {args.tag}" if args.tag else ""),
        "target": "truth_ce_micro_f1 >= 0.8 (labeler on the generated text vs the generator's image labels)",
        "floor_most_common_training_report": {"report": most_common, **{k: floor[k] for k in KEYS if k in floor}},
        "models": table,
        "runs": per_run,
    }
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
