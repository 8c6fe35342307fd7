"""The shipped IU X-ray recipes at real size, on the IU stand-in (real report text, 224 px phantom images).

    python benchmarks/iu_standin.py prepare [--data data/iu_xray]
    python benchmarks/iu_standin.py speed [--steps 10] [--json benchmarks/results/iu_standin_cpu2.json]
    python benchmarks/iu_standin.py score --run runs/iu_xray/baseline [--json ...]

``prepare``: :func:`synthcxr.iu_standin.render_iu_standin` draws each of the 3,955 Open-i reports
(what the labeler reads in its findings: finding, severity, side) as a frontal + lateral pair at 224 px in
``NLMCXR_png``'s layout, then ``radloop data iu-xray`` imports it (R2Gen's 2,955 studies, the suite's split
by report id). Both steps skip what is already on disk.

``speed``: every recipe of ``configs/iu_xray/index.yaml`` as shipped (model, image size, batch), in index
order, each for ``--steps`` optimizer steps in its own process (so its peak memory is its own), in a scratch
folder where each recipe loads the ``runs/iu_xray/<name>/best`` the one before wrote. Reports seconds per
step (validation excluded), the steps of one epoch of the whole training split, the epoch's wall time and the
peak resident memory. ``--subset N`` runs on the first N training studies (the diffusion recipe encodes every
training image once before its first step; per-step times do not depend on N).

``score``: the trained report model on the test split with its saved decoding (the recipe's beam 3 and
trigram block): BLEU-1..4, METEOR, ROUGE-L, CIDEr against the real report text, CE against the labeler's
reading of the real report, and the same for the floor that writes the most common training report for
every study. The result files merge (``--json`` keeps the other sections).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "iu_xray"

#: what keeps a short speed run short without changing the model or its input: few validation samples
SHORT = {
    "backbone": [], "classifier": [], "tower": [], "lsu": [], "radcare": [],
    "autoencoder": ["data.val_samples=4"], "diffusion": ["data.val_samples=4"], "report": ["data.val_samples=8"],
}


def prepare(data: Path, png: Path, workers: int) -> dict[str, Any]:
    from shared.data.importers import import_iu_xray
    from synthcxr.iu_standin import render_iu_standin

    start = time.perf_counter()
    rendered = render_iu_standin(png, size=224, workers=workers)
    imported = import_iu_xray(None, png, data, size=0, workers=workers)
    return {"rendered": {k: v for k, v in rendered.items()}, "studies": imported["studies"],
            "left_out": imported["left_out"], "seconds": round(time.perf_counter() - start, 1)}


def _subset(annotation: Path, n_train: int, n_val: int) -> Path:
    """The first studies of the training and validation splits, beside the annotation (so images resolve the
    same way): a short run's per-step time does not depend on the data set's size, its set-up does."""
    data = json.loads(annotation.read_text())
    small = {"train": data["train"][:n_train], "val": data["val"][:n_val], "test": []}
    out = annotation.with_name(f"annotation_first{n_train}.json")
    out.write_text(json.dumps(small))
    return out


def speed(annotation: Path, work: Path, steps: int, subset: int | None = None,
          only: list[str] | None = None) -> dict[str, Any]:
    """Short runs of every recipe in index order (see the module docstring)."""
    index = yaml.safe_load((RECIPES / "index.yaml").read_text())["recipes"]
    full = json.loads(annotation.read_text())
    n_train = len(full["train"])
    if subset:
        annotation = _subset(annotation, subset, 32)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = {}
    for name, entry in index.items():
        if only and name not in only:
            continue
        trainer = entry["trainer"]
        args = [sys.executable, "-m", "radloop", "train", trainer, "--config", str(RECIPES / f"{name}.yaml"),
                f"data.annotation={annotation.resolve()}", f"train.max_steps={steps}", f"train.eval_every={steps}",
                f"train.checkpoint_every={steps}", f"train.log_every={steps}", *SHORT[trainer]]
        start = time.perf_counter()
        done = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
        result = json.loads((work / "runs" / "iu_xray" / name / "train_result.json").read_text())
        per_step = result["seconds_per_step"]
        # the epoch of the whole training split, at the recipe's batch (a subset run's loader is shorter)
        per_epoch = round(result["steps_per_epoch"] * n_train / min(n_train, subset or n_train))
        out[name] = {"trainer": trainer, "seconds_per_step": round(per_step, 3), "steps_per_epoch": per_epoch,
                     "epoch_minutes": round(per_step * per_epoch / 60, 2),
                     "peak_rss_gb": round(result.get("peak_rss_gb", float("nan")), 2),
                     "process_seconds": round(time.perf_counter() - start, 1)}
        print(name, out[name], flush=True)
    return out


def score(run: Path, annotation: Path, weights: str = "best") -> dict[str, Any]:
    from evaluation.reports import evaluate_reports
    from image2report.train import generate_reports
    from shared.data.dataset import load_records

    records = load_records(annotation)
    refs = {r["id"]: r["report"] for r in records if r["split"] == "test"}
    train = [r["report"] for r in records if r["split"] == "train"]
    start = time.perf_counter()
    preds = generate_reports(str(run / weights), str(annotation), "test")
    seconds = time.perf_counter() - start
    model = evaluate_reports(preds, refs, training_reports=train)
    common = Counter(train).most_common(1)[0][0]
    floor = evaluate_reports(dict.fromkeys(refs, common), refs, training_reports=train)
    keys = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "ce_micro_f1", "ce_macro_f1",
            "ce_micro_precision", "ce_micro_recall", "unique_report_rate", "self_contradiction_rate",
            "unfinished_rate", "novel_sentence_rate")
    history = json.loads((run / "history.json").read_text())
    result = json.loads((run / "train_result.json").read_text())
    return {
        "run": str(run), "weights": weights, "argv": json.loads((run / "run_info.json").read_text()).get("argv"),
        "train_result": result, "test_studies": len(refs),
        "model": {k: round(model[k], 4) for k in keys if k in model},
        "most_common_report": {k: round(floor[k], 4) for k in keys if k in floor},
        "floor_report": common, "reports_per_second": round(len(preds) / seconds, 2),
        "validation": [{k: round(v, 4) for k, v in h.items()} for h in history if "val/ce_micro_f1" in h],
        "examples": [{"id": i, "generated": preds[i], "reference": refs[i]} for i in sorted(refs)[:3]],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("prepare", "speed", "score"))
    p.add_argument("--data", type=Path, default=ROOT / "data" / "iu_xray", help="the imported stand-in")
    p.add_argument("--png", type=Path, default=ROOT / "data" / "iu_standin_png", help="the rendered release")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "iu_standin_speed", help="scratch folder (speed)")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per recipe (speed)")
    p.add_argument("--recipes", nargs="+", help="speed: only these (their rows replace those of an earlier run)")
    p.add_argument("--subset", type=int, help="speed: run on the first N training studies (and 32 validation ones): "
                   "the set-up (caches, validation) shrinks, the per-step time does not")
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "iu_xray" / "baseline", help="trained run (score)")
    p.add_argument("--weights", default="best", choices=("best", "final"), help="which saved weights (score)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, help="merge the section into this results file")
    args = p.parse_args(argv)
    if args.what == "prepare":
        section = prepare(args.data, args.png, args.workers)
    elif args.what == "speed":
        args.work.mkdir(parents=True, exist_ok=True)
        rows = speed(args.data / "annotation.json", args.work, args.steps, args.subset, args.recipes)
        if args.recipes and args.json and args.json.is_file():  # a partial rerun keeps the other recipes' rows
            rows = {**json.loads(args.json.read_text()).get("speed", {}).get("recipes", {}), **rows}
        section = {"steps": args.steps, "subset": args.subset, "recipes": rows}
    else:
        section = score(args.run, args.data / "annotation.json", args.weights)
    section["command"] = "python benchmarks/iu_standin.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.json:
        merged = json.loads(args.json.read_text()) if args.json.is_file() else {}
        key = args.what if args.what != "score" else f"score_{args.run.name}_{args.weights}"
        merged.update({"benchmark": "iu_standin", "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
                       key: section})
        args.json.write_text(json.dumps(merged, indent=1) + "\n")
    print(json.dumps(section, indent=1))


if __name__ == "__main__":
    main()
