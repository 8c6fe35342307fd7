"""Seconds per training step of a zoo report decoder: trained tower on images, frozen tower on images, and the
frozen tower's cached grid features (what the zoo recipes use). Prints JSON.

    python benchmarks/decoder_step_speed.py [--model ifnet_small] [--steps 30] [--batch-size 64] [--compile] \
        [--json benchmarks/results/decoder_step_speed_cpu2.json]

Random 64 px images and 40-token reports; AdamW steps on the parameters that train; the first 5 steps
are warm-up and not timed. ``--compile`` also times the cached-features step of ``torch.compile(model)``
(inductor), with the seconds its warm-up steps took (the compilation a training run would pay once).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import image2report  # noqa: F401  (registers every decoder)
from image2report.models import build_report_model


def time_steps(model: torch.nn.Module, images: torch.Tensor | None, features: torch.Tensor | None,
               ids: torch.Tensor, labels: torch.Tensor | None, steps: int, run: Callable[..., Any] | None = None,
               warmup: list[float] | None = None) -> float:
    """Seconds per AdamW step of ``model``'s loss, called through ``run`` (default the model itself; e.g. its
    ``torch.compile`` wrapper); the 5 warm-up steps' total seconds are appended to ``warmup`` when given."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    extra = {"labels": labels} if labels is not None else {}
    if features is not None:
        extra["features"] = features
    run = model if run is None else run
    model.train()
    start = time.perf_counter()
    for i in range(steps + 5):
        if i == 5:
            if warmup is not None:
                warmup.append(time.perf_counter() - start)
            start = time.perf_counter()
        loss = run(images, ids, **extra).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ifnet_small")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--compile", action="store_true", help="also time torch.compile(model) on cached features")
    p.add_argument("--json")
    args = p.parse_args()
    torch.manual_seed(0)
    options = {"visual": "cxr_resnet_small"}
    if args.model.startswith("ifnet"):
        options["use_enhancement"] = False
    if args.model.startswith("uar"):
        options["use_lsu"] = False
    b = args.batch_size
    images = torch.rand(b, 1, 1, 64, 64) * 2 - 1
    ids = torch.randint(4, 200, (b, 40))
    ids[:, 0], ids[:, -1] = 1, 2
    result = {"benchmark": "decoder_step_speed", "model": args.model, "batch_size": b,
              "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
              "command": f"python benchmarks/decoder_step_speed.py --model {args.model} --steps {args.steps} "
                         f"--batch-size {b}" + (" --compile" if args.compile else "")}
    model = build_report_model(args.model, 300, **options)
    labels = (torch.rand(b, 14) > 0.8).float() if getattr(model, "uses_labels", False) else None
    result["trained_tower_s"] = round(time_steps(model, images, None, ids, labels, args.steps), 4)
    model.freeze_visual()
    result["frozen_tower_s"] = round(time_steps(model, images, None, ids, labels, args.steps), 4)
    with torch.no_grad():
        grid = model.tower_grid(images.flatten(0, 1))
    features = grid.reshape(b, 1, *grid.shape[1:])
    result["cached_features_s"] = round(time_steps(model, None, features, ids, labels, args.steps), 4)
    result["speedup_cached_vs_trained"] = round(result["trained_tower_s"] / result["cached_features_s"], 2)
    if args.compile:
        warmup: list[float] = []
        result["cached_features_compiled_s"] = round(
            time_steps(model, None, features, ids, labels, args.steps, torch.compile(model), warmup), 4)
        result["compile_warmup_s"] = round(warmup[0], 1)
        result["speedup_compiled_vs_cached"] = round(result["cached_features_s"] / result["cached_features_compiled_s"],
                                                     2)
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
