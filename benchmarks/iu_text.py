"""How well the zoo's text side reads real report wording (IU X-ray), before and after ``radclip_small_iu``.

    python benchmarks/iu_text.py [--backbones zoo:radclip_small zoo:radclip_small_iu] \\
        [--synth runs/zoo/data/synthcxr64_test] [--pipeline zoo:ldm64] [--judge zoo:judge64] [--n 754] \\
        [--json benchmarks/results/iu_text_cpu2.json] \\
        [--zoo-results zoo/synthcxr64/scores.json]

On the IU X-ray test reports (split by report id, never trained on) and the fresh SynthCXR test set
(``configs/zoo/test_data.yaml``, seed 1001), per backbone:

* ``text``: :func:`shared.backbone.text_align.text_side_metrics` -- ``<unk>`` share of the IU running words,
  zero-shot finding AUROC of the report embeddings against the labeler's labels (macro and per finding), the
  findings head's AUROC, and how often a SynthCXR report stating exactly the same findings is among an IU
  report's 5 nearest (beside chance);
* ``generation`` (with ``--pipeline``): the pipeline with this backbone as its text encoder draws one image per
  report (DPM-Solver++ 20 steps, guidance 5, the same seeds for every backbone) from the first ``--n`` IU test
  reports and as many SynthCXR test reports; the judge's mAUC on those images against the labeler's labels of
  the reports they were drawn from (positive vs not positive, one protocol for both sets). The judge shares no
  weights with any generator.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.classifier import Judge
from radloop.zoo import load_index, merge_results
from report2image import ReportToCXRPipeline
from shared.backbone.clip import RadCLIP
from shared.backbone.text_align import text_side_metrics
from shared.data.dataset import load_records
from shared.data.iu_xray import read_iu_reports, split_iu_reports
from shared.io import atomic_write_text
from shared.labels import CHEXPERT_LABELS
from shared.metrics import multilabel_auroc
from shared.text.labeler import ReportLabeler

ROOT = Path(__file__).resolve().parents[1]
#: findings with fewer positive reports than this are left out of ``mauc_20plus``
MIN_POSITIVES = 20


def _round(x: Any) -> Any:
    """4 decimals; NaN (a finding no report of the set states has no AUC) becomes JSON null."""
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, 4)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    return x


def generation_mauc(pipe: ReportToCXRPipeline, judge: Judge, reports: list[str], labels: np.ndarray, seed: int
                    ) -> dict[str, Any]:
    """The judge's mAUC (and per finding) on one image per report, against the reports' positives."""
    start = time.perf_counter()
    images = pipe.generate_batched(reports, 50, seed, 20, 5.0, output_type="pt")
    scores = judge(images).numpy()
    positives = (labels == 1).astype(float)
    auc = multilabel_auroc(scores, positives, CHEXPERT_LABELS)
    per = {k.removeprefix("auroc/"): v for k, v in auc.items() if k.startswith("auroc/")}
    counts = dict(zip(CHEXPERT_LABELS, positives.sum(0).astype(int).tolist(), strict=True))
    # an AUC over 2-16 positive reports moves by tenths between runs: the macro over the well-populated
    # findings is the number to compare backbones by
    common = [k for k, c in counts.items() if c >= MIN_POSITIVES and not math.isnan(per[k])]
    return {"n": len(reports), "mauc": auc["mauc"], "classes": auc["mauc_classes"],
            f"mauc_{MIN_POSITIVES}plus": float(np.mean([per[k] for k in common])) if common else None,
            f"classes_{MIN_POSITIVES}plus": common, "auroc": per, "positives": counts,
            "seconds": time.perf_counter() - start}


_TEXT_ROWS = {"unk_share": "IU running words read as `<unk>`", "zero_shot_mauc": "zero-shot finding mAUC",
              "head_mauc": "findings-head mAUC", "nn_top5": "same findings among 5 nearest SynthCXR reports",
              "nn_top5_abnormal": "same findings among 5 nearest, reports with a finding"}


def zoo_real_text(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows the zoo's model cards quote (:func:`radloop.zoo.merge_results`): every ``text_align`` zoo
    entry among the backbones, beside the first backbone (the one it was built from)."""

    backbones, command = result["backbones"], result["command"]
    base = next(iter(backbones))
    out: dict[str, dict[str, Any]] = {}
    for name, recipe in load_index().entries.items():
        if recipe.real_text is not None and recipe.trainer == "text_align" and f"zoo:{name}" in backbones:
            this, ref = backbones[f"zoo:{name}"]["text"], backbones[base]["text"]
            rows = {label: [this[k], ref[k]] for k, label in _TEXT_ROWS.items()}
            rows["chance of the two above"] = [f"{this['nn_chance']} / {this['nn_chance_abnormal']}"] * 2
            gen, gen_ref = backbones[f"zoo:{name}"].get("generation"), backbones[base].get("generation")
            if gen and gen_ref:  # the pipeline's UNet and conditioner with this text encoder swapped in
                for key, label in (("iu_test", "IU X-ray test"), ("synthcxr_test", "SynthCXR test")):
                    rows[f"judge mAUC on {result['pipeline']} images from {label} reports "
                         f"(findings with >= {MIN_POSITIVES} positives)"] = [
                        gen[key][f"mauc_{MIN_POSITIVES}plus"], gen_ref[key][f"mauc_{MIN_POSITIVES}plus"]]
            out[name] = {"base": base.removeprefix("zoo:"), "rows": rows, "command": command}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["zoo:radclip_small", "zoo:radclip_small_iu"],
                        help="the first is the base the zoo cards compare the others with")
    parser.add_argument("--synth", default="runs/zoo/data/synthcxr64_test", help="a SynthCXR folder never trained on")
    parser.add_argument("--archive", help="NLMCXR_reports.tgz (default: the torchxrayvision wheel's)")
    parser.add_argument("--pipeline", help="a report -> CXR pipeline (e.g. zoo:ldm64); generation is skipped without")
    parser.add_argument("--judge", default="zoo:judge64")
    parser.add_argument("--n", type=int, default=754, help="reports of each set to generate from")
    parser.add_argument("--synth-n", dest="synth_n", type=int, default=3000, help="SynthCXR reports for the text side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    parser.add_argument("--zoo-results", dest="zoo_results",
                        help="merge the model cards' rows into this zoo results file (its 'real_text' block)")
    args = parser.parse_args()

    iu_test = [r.text for r in split_iu_reports(read_iu_reports(args.archive))["test"]]
    synth = [r["report"] for r in load_records(Path(args.synth) / "annotation.json")][: args.synth_n]
    labeler = ReportLabeler()
    iu_labels, synth_labels = labeler.label_batch(iu_test), labeler.label_batch(synth)
    result: dict[str, Any] = {
        "benchmark": "iu_text", "machine": f"{platform.machine()} CPU", "iu_test_reports": len(iu_test),
        "synth_reports": len(synth), "synth_data": args.synth,
        "command": " ".join(["python", "benchmarks/iu_text.py", *sys.argv[1:]]), "backbones": {}}
    pipe = ReportToCXRPipeline.from_pretrained(args.pipeline) if args.pipeline else None
    if pipe is not None:
        pipe.set_progress_bar_config(disable=True)
    judge = Judge.from_pretrained(args.judge) if pipe is not None else None
    n = min(args.n, len(iu_test), len(synth))
    for name in args.backbones:
        backbone = RadCLIP.from_pretrained(name).eval()
        row: dict[str, Any] = {"vocab": len(backbone.tokenizer),
                               "text": text_side_metrics(backbone, iu_test, iu_labels, synth, synth_labels)}
        if pipe is not None and judge is not None:
            pipe.text_encoder = backbone  # the UNet and conditioner stay; only the text side changes
            row["generation"] = {"iu_test": generation_mauc(pipe, judge, iu_test[:n], iu_labels[:n], args.seed),
                                 "synthcxr_test": generation_mauc(pipe, judge, synth[:n], synth_labels[:n], args.seed)}
        result["backbones"][name] = _round(row)
        print(json.dumps({name: result["backbones"][name]}), file=sys.stderr, flush=True)
    if pipe is not None:
        result["pipeline"] = args.pipeline
        result["judge"] = args.judge
    text = json.dumps(result, indent=1, allow_nan=False)
    print(text)
    if args.json:
        atomic_write_text(Path(args.json), text + "\n")
    if args.zoo_results:
        merge_results("real_text", zoo_real_text(result), Path(args.zoo_results))


if __name__ == "__main__":
    main()
