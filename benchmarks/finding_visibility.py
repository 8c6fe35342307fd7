"""How much of the image a finding changes, per size: the pixel side of "where do the findings survive".

    python benchmarks/finding_visibility.py [--sizes 64 128 256] [--n 30] \
        [--json benchmarks/results/finding_visibility.json]

SynthCXR renders each of ``--n`` patients (canonical seeds, noise off) without and with one finding, the true
counterfactual pair; per finding and size: the median over patients of the largest intensity change (images in
[0, 1]) and of the number of pixels that change by more than 0.02 (above the acquisition noise, sd 0.005-0.015).
A finding a judge cannot learn although it changes many pixels strongly is lost in the reader, not in the pixels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from synthcxr import Finding, render, sample_acquisition, sample_patient, stable_seed

FINDINGS = {
    "Fracture": dict(laterality="right", zone="lower", kind="rib"),
    "Pneumothorax": dict(severity="small", laterality="right", zone="apex"),
    "Lung Lesion": dict(severity="small", laterality="right", zone="upper", kind="nodule"),
    "Pleural Effusion": dict(severity="small", laterality="right"),
}


def visibility(name: str, size: int, n: int) -> dict[str, float]:
    largest, changed = [], []
    for i in range(n):
        patient = sample_patient(f"P{i}", stable_seed("visibility", i))
        acquisition = sample_acquisition(stable_seed("visibility-acq", i))
        finding = Finding(name, seed=i, **FINDINGS[name])
        diff = np.abs(render(patient, [finding], acquisition, size, noise=False)
                      - render(patient, [], acquisition, size, noise=False))
        largest.append(float(diff.max()))
        changed.append(int((diff > 0.02).sum()))
    return {"median_largest_change": round(float(np.median(largest)), 3),
            "median_pixels_changed": float(np.median(changed)),
            "median_share_of_image": round(float(np.median(changed)) / size ** 2, 5)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 256])
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    rows = {name: {str(size): visibility(name, size, args.n) for size in args.sizes} for name in FINDINGS}
    result = {"benchmark": "finding_visibility", "patients": args.n, "rows": rows,
              "command": "python benchmarks/finding_visibility.py " + " ".join(argv or [])}
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
