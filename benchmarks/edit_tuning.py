"""Counterfactual edit settings (strength, guidance and the DiffEdit mask's threshold ratio and dilation) tried on
validation edits of the training data, so that the test set is not where they are chosen. Prints one JSON line per
setting.

    python benchmarks/edit_tuning.py --pipeline zoo:ldm64 --classifier zoo:judge64 --data runs/zoo/data/synthcxr64 \\
        --settings 0.7:2 0.7:5 0.9:5 0.9:8 0.8:5 1.0:5 1.0:8 0.9:5:5:0

A setting is ``strength:guidance[:threshold_ratio[:dilate]]`` (mask defaults 3 and 0, as in
``ReportToCXRPipeline.counterfactual``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from evaluation.classifier import Judge
from evaluation.loop import counterfactual_metrics
from report2image import ReportToCXRPipeline
from synthcxr import counterfactual_edits


def _parse_setting(setting: str) -> tuple[float, float, float, int]:
    """``strength:guidance[:threshold_ratio[:dilate]]`` -> (strength, guidance, ratio, dilate)."""
    parts = setting.split(":")
    if not 2 <= len(parts) <= 4:
        raise SystemExit(f"--settings {setting!r}: give strength:guidance[:threshold_ratio[:dilate]]")
    try:
        values = [float(x) for x in parts[:3]] + [int(x) for x in parts[3:]]
    except ValueError:
        raise SystemExit(f"--settings {setting!r}: not numbers") from None
    strength, guidance, ratio, dilate = values + [3.0, 0][len(values) - 2:]
    return strength, guidance, ratio, int(dilate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--data", required=True, help="a SynthCXR folder whose val split gives the edits")
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--settings", nargs="+", default=["0.7:2", "0.9:5"],
                        help="strength:guidance[:threshold_ratio[:dilate]]")
    args = parser.parse_args()
    pipe = ReportToCXRPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    judge = Judge.from_pretrained(args.classifier)
    edits = counterfactual_edits(args.data, "val", args.n, 0)
    source = torch.stack([torch.from_numpy(e.source)[None] for e in edits])
    truth = torch.stack([torch.from_numpy(e.true_cf)[None] for e in edits])
    for setting in args.settings:
        strength, guidance, ratio, dilate = _parse_setting(setting)
        start = time.perf_counter()
        out = pipe.counterfactual(source, [e.new_report for e in edits], [e.source_report for e in edits],
                                  strength=strength, guidance_scale=guidance, num_inference_steps=args.steps,
                                  output_type="pt", mask_threshold_ratio=ratio, mask_dilate=dilate)
        m = counterfactual_metrics(source, out.images, truth, judge, [e.added for e in edits],
                                   [e.removed for e in edits])
        print(json.dumps({"split": "val", "n": len(edits), "strength": strength, "guidance": guidance,
                          "mask_threshold_ratio": ratio, "mask_dilate": dilate,
                          **{k: round(m[k], 3) for k in ("flip_rate", "ssim_to_true_cf", "ssim_outside_edit")},
                          "mask_area": round(float(out.masks.mean()), 3),
                          "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
