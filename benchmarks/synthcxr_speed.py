"""SynthCXR generation speed: studies/s for a full dataset written to disk.

    python benchmarks/synthcxr_speed.py --patients 3334 --studies-per-patient 3 --size 128

Prints one JSON object. The target (issue 2) is 10,000 studies at 128 px well under 2 minutes
on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

from synthcxr import SynthConfig, generate_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=3334)
    parser.add_argument("--studies-per-patient", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--views", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    cfg = SynthConfig(patients=args.patients, studies_per_patient=args.studies_per_patient, size=args.size,
                      views=args.views, workers=args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = generate_dataset(tmp, cfg)
        seconds = time.perf_counter() - start
    print(json.dumps({
        "benchmark": "synthcxr_generation",
        "studies": summary["studies"],
        "size": args.size,
        "views": args.views,
        "workers": args.workers or min(2, os.cpu_count() or 1),
        "seconds": round(seconds, 2),
        "studies_per_s": round(summary["studies"] / seconds, 1),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
