"""Diff-CXR / disentanglement ablation on SynthCXR: train one arm per switch, score each, print JSON.

    python benchmarks/diffusion_ablation.py --data runs/bench/synthcxr64 --backbone runs/backbone/best \
        --classifier runs/bench/clf64/best --autoencoder runs/diffusion/autoencoder/final [--arms ...]

Every arm trains the UNet stage of ``configs/synth/diffusion.yaml`` from the same autoencoder with one
switch off, then runs ``benchmarks/diffusion_synth.py`` on its ``best`` pipeline. Arms whose
``runs/bench/ablation/<arm>/best`` already exists are only scored.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ARMS = {
    "full": [],
    "no_noise_filter": ["loss.noise_filter=false"],
    "no_vision_aware_text": ["model.use_refiner=false"],
    "no_disentanglement": ["model.use_identity=false"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/bench/synthcxr64")
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--autoencoder", required=True)
    parser.add_argument("--out", default="runs/bench/ablation")
    parser.add_argument("--arms", nargs="*", default=list(ARMS))
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--edits", type=int, default=64)
    parser.add_argument("--skip-noise-opt", dest="skip_noise_opt", action="store_true")
    args = parser.parse_args()
    results = {}
    for arm in args.arms:
        run = Path(args.out) / arm
        train_seconds = None
        if not (run / "best").is_dir():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "radloop", "train", "diffusion", "--config",
                            "configs/synth/diffusion.yaml", f"data.annotation={args.data}/annotation.json",
                            f"model.backbone={args.backbone}", f"model.autoencoder={args.autoencoder}",
                            f"train.output_dir={run}", "train.progress=false", *ARMS[arm]], check=True)
            train_seconds = round(time.perf_counter() - start, 1)
        score = subprocess.run([sys.executable, "benchmarks/diffusion_synth.py", "--pipeline", str(run / "best"),
                                "--data", args.data, "--classifier", args.classifier, "--backbone", args.backbone,
                                "--run-dir", str(run), "--n", str(args.n), "--edits", str(args.edits),
                                *(["--skip-noise-opt"] if args.skip_noise_opt else [])],
                               check=True, capture_output=True, text=True).stdout
        results[arm] = {"overrides": ARMS[arm], "unet_train_seconds": train_seconds, **json.loads(score)}
        print(json.dumps({arm: results[arm]}, default=float), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "diffusion_ablation_synthcxr", "arms": results}, indent=1, default=float))


if __name__ == "__main__":
    main()
