"""The zoo augmentation benchmark: does training a report decoder on synthetic images of rare findings help?

Runs ``radloop augment`` with the zoo recipe (``configs/zoo/augment.yaml``: the zoo's ldm64 draws the rare
findings' studies, baseline decoders on the frozen zoo:radclip_small tower, arms real / real+synthetic / real
with the rare real studies repeated / the amount curve, three seeds each, scored on a fresh test set) and writes
the result without the per-run predictions, plus the machine and wall time, as one JSON file.

    python benchmarks/augment_synth.py --config configs/zoo/augment.yaml \\
        --json zoo/synthcxr64/augmentation.json

A rerun reuses the synthetic images and every finished (arm, seed) run of the output folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from radloop.augment import AugmentExperiment, run_augment
from shared.config import load_config
from shared.io import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/zoo/augment.yaml")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("overrides", nargs="*", help="key=value over the config")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = OmegaConf.to_object(load_config(AugmentExperiment(), args.config, args.overrides))
    start = time.perf_counter()
    result = run_augment(cfg)
    # named after the training data (synthcxr64, synthcxr128), as the other zoo benchmarks are
    result = {"benchmark": f"zoo_augmentation_{Path(cfg.annotation).parent.name}",
              "command": " ".join(["python", *sys.argv]),
              "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
              "wall_minutes": round((time.perf_counter() - start) / 60, 1), **result}
    text = json.dumps(result, indent=1, default=float)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, text + "\n")


if __name__ == "__main__":
    main()
