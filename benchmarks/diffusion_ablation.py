"""Diff-CXR / disentanglement / training-accelerator ablation on SynthCXR: train one arm per switch, score each,
print JSON.

    # the first-wave recipe (800 UNet steps on a short autoencoder)
    python benchmarks/diffusion_ablation.py --data runs/bench/synthcxr64 --backbone runs/backbone/best \\
        --classifier runs/bench/clf64/best --autoencoder runs/diffusion/autoencoder/final [--arms ...]
    # the zoo recipe: every switch of ldm64 off in turn, on the zoo's frozen autoencoder and text tower
    python benchmarks/diffusion_ablation.py --config configs/zoo/ldm64.yaml --data runs/zoo/data/synthcxr64 \\
        --test-data runs/zoo/data/synthcxr64_test --backbone zoo:radclip_small --classifier zoo:judge64 \\
        --autoencoder zoo:autoencoder64 --out runs/zoo/ablation --max-steps 3000 --guidance 5 --edit-guidance 5 \\
        --edit-strengths 0.9 --arms full no_v_prediction no_min_snr no_ema no_attributes no_noise_filter \\
        no_vision_aware_text no_disentanglement

Every arm trains the UNet stage of ``--config`` from the same autoencoder with one switch off, then runs
``benchmarks/diffusion_synth.py`` on its ``best`` pipeline (test split of ``--test-data``). Arms whose
``<out>/<arm>/best`` already exists are only scored, so a long ablation can run over several sessions.
``--full-pipeline zoo:ldm64`` scores the shipped entry as the ``full`` arm instead of training the same recipe
again (its noise-filter flags are then not re-read: they live in the entry's training run).
``--raw-weights ARM`` also scores ARM's raw (non-EMA) weights of its last checkpoint as the arm ``ARM+raw_weights``:
the EMA never feeds back into training, so this is the "EMA weights for sampling" switch without a second run.
One training seed per arm.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

#: arm -> the config overrides that switch one thing off
ARMS = {
    "full": [],
    "no_noise_filter": ["loss.noise_filter=false"],
    "no_vision_aware_text": ["model.use_refiner=false"],
    "no_disentanglement": ["model.use_identity=false"],
    # the training accelerators of the zoo recipe (issue 16)
    "no_v_prediction": ["loss.prediction_type=epsilon"],
    "no_min_snr": ["loss.snr_gamma=null"],
    "no_ema": ["train.ema_decay=null"],
    "no_attributes": ["model.use_attributes=false"],
}


#: suffix of the arms that score an arm's raw (non-EMA) weights
RAW = "+raw_weights"


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/synth/diffusion.yaml", help="the recipe every arm starts from")
    parser.add_argument("--data", default="runs/bench/synthcxr64", help="SynthCXR folder the arms train on")
    parser.add_argument("--test-data", dest="test_data", help="SynthCXR folder whose test split scores them "
                                                              "(default --data)")
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--autoencoder", required=True)
    parser.add_argument("--out", default="runs/bench/ablation")
    parser.add_argument("--arms", nargs="*", default=["full", "no_noise_filter", "no_vision_aware_text",
                                                      "no_disentanglement"], choices=list(ARMS))
    parser.add_argument("--max-steps", dest="max_steps", type=int,
                        help="UNet steps of every arm (default: the recipe's)")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--edits", type=int, default=64)
    parser.add_argument("--guidance", type=float, help="generation guidance (default: diffusion_synth.py's)")
    parser.add_argument("--edit-guidance", dest="edit_guidance", type=float)
    parser.add_argument("--edit-strengths", dest="edit_strengths", type=float, nargs="+")
    parser.add_argument("--full-pipeline", dest="full_pipeline",
                        help="score this pipeline (e.g. zoo:ldm64, trained by --config) as the full arm, untrained")
    parser.add_argument("--raw-weights", dest="raw_weights", nargs="*", default=[], choices=list(ARMS),
                        help="arms whose raw (non-EMA) weights of the last checkpoint are scored too")
    parser.add_argument("--skip-noise-opt", dest="skip_noise_opt", action="store_true")
    return parser.parse_args()


def train_overrides(args: argparse.Namespace, arm: str, run: Path) -> list[str]:
    """The ``radloop train diffusion`` overrides of one arm."""
    return [f"data.annotation={args.data}/annotation.json", f"model.backbone={args.backbone}",
            f"model.autoencoder={args.autoencoder}", f"train.output_dir={run}", "train.progress=false",
            *([f"train.max_steps={args.max_steps}"] if args.max_steps else []), *ARMS[arm]]


def arm_pipeline(args: argparse.Namespace, arm: str, run: Path) -> str:
    """The pipeline an arm is scored on: its own ``best``, ``--full-pipeline`` for the full arm, or the raw
    weights for ``ARM+raw_weights``."""
    if arm.endswith(RAW):
        return str(run / "final_raw")
    return args.full_pipeline if arm == "full" and args.full_pipeline else str(run / "best")


def raw_weights_pipeline(run: Path) -> Path:
    """Write ``<run>/final_raw``: ``<run>/final`` (EMA weights) with the UNet and conditioner of the run's last
    checkpoint, i.e. the weights the optimiser left, and return it. Raises ``FileNotFoundError`` naming the run
    when it has no ``final`` or no checkpoint."""
    from safetensors.torch import load_file

    from report2image import ReportToCXRPipeline

    checkpoints = [p for p in (run / "checkpoints").glob("checkpoint_*") if p.name.split("_")[-1].isdigit()]
    if not (run / "final").is_dir() or not checkpoints:
        raise FileNotFoundError(f"{run}: --raw-weights needs a finished run (final/) with a checkpoint")
    last = max(checkpoints, key=lambda p: int(p.name.split("_")[-1]))
    state = load_file(last / "model.safetensors")
    pipe = ReportToCXRPipeline.from_pretrained(run / "final")
    for name in ("unet", "conditioner"):
        part = {k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")}
        getattr(pipe, name).load_state_dict(part)
    pipe.save_pretrained(run / "final_raw")
    return run / "final_raw"


def score_args(args: argparse.Namespace, arm: str, run: Path) -> list[str]:
    """The ``benchmarks/diffusion_synth.py`` arguments that score one arm's pipeline."""
    optional = {"--guidance": args.guidance, "--edit-guidance": args.edit_guidance}
    return ["--pipeline", arm_pipeline(args, arm, run), "--data", args.test_data or args.data,
            "--train-data", args.data, "--classifier", args.classifier, "--backbone", args.backbone,
            "--run-dir", str(run), "--n", str(args.n), "--edits", str(args.edits),
            *[x for k, v in optional.items() if v is not None for x in (k, str(v))],
            *(["--edit-strengths", *map(str, args.edit_strengths)] if args.edit_strengths else []),
            *(["--skip-noise-opt"] if args.skip_noise_opt else [])]


def main() -> None:
    args = _parse_args()
    results = {}
    for arm in [*args.arms, *(a + RAW for a in args.raw_weights)]:
        run = Path(args.out) / arm.removesuffix(RAW)
        train_seconds = None
        if arm.endswith(RAW) and not (run / "final_raw").is_dir():
            raw_weights_pipeline(run)
        if arm_pipeline(args, arm, run) == str(run / "best") and not (run / "best").is_dir():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "radloop", "train", "diffusion", "--config", args.config,
                            *train_overrides(args, arm, run)], check=True)
            train_seconds = round(time.perf_counter() - start, 1)
        score = subprocess.run([sys.executable, "benchmarks/diffusion_synth.py", *score_args(args, arm, run)],
                               check=True, capture_output=True, text=True).stdout
        results[arm] = {"overrides": ARMS[arm.removesuffix(RAW)], "pipeline": arm_pipeline(args, arm, run),
                        "unet_train_seconds": train_seconds, **json.loads(score)}
        print(json.dumps({arm: results[arm]}, default=float), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "diffusion_ablation_synthcxr", "config": args.config, "max_steps": args.max_steps,
                      "arms": results}, indent=1, default=float))


if __name__ == "__main__":
    main()
