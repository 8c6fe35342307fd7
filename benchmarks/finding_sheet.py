"""A contact sheet of one finding: real test images, their reconstructions and what each generator draws from
their reports, a row each (the figure in docs/results.md, "A loss weighted where the finding is").

    python benchmarks/finding_sheet.py --finding Fracture --data runs/zoo/data/synthcxr128_rare_test \
        --pipelines zoo:ldm128 runs/ldm128_region/best runs/ldm128_region_area/best \
        --out docs/images/ldm128_fracture_reports.png

The studies: the first ``--n`` test studies of a SynthCXR folder whose image shows ``--finding`` and nothing else
(``attributes.jsonl``), so what a generator adds or leaves out is the finding's doing. The reconstruction row
uses the first pipeline's autoencoder (posterior mean). Every generator samples with the same seed, guidance
and steps. Prints the study ids as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from report2image import ReportToCXRPipeline
from report2image.autoencoder import reconstruct
from synthcxr import read_attributes


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--finding", required=True, help="a SynthCXR finding, e.g. Fracture")
    p.add_argument("--data", required=True, help="a SynthCXR folder with a test split")
    p.add_argument("--pipelines", nargs="+", required=True, help="pipeline folders or zoo:NAME, a row each")
    p.add_argument("--n", type=int, default=4, help="studies (columns)")
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output PNG")
    return p.parse_args(argv)


def _studies(data: Path, finding: str, n: int) -> list[dict]:
    """The first ``n`` test studies whose image shows ``finding`` alone, with their reports and images."""
    alone = {r["id"] for r in read_attributes(data) if r["split"] == "test"
             and [f["name"] for f in r["findings"]] == [finding]}
    test = json.loads((data / "annotation.json").read_text())["test"]
    chosen = [r for r in test if r["id"] in alone][:n]
    if not chosen:
        raise SystemExit(f"{data}: no test study shows {finding!r} alone")
    return chosen


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    data = Path(args.data)
    studies = _studies(data, args.finding, args.n)
    real = [np.asarray(Image.open(data / r["image_path"][0]).convert("L"), np.float32) / 255.0 for r in studies]
    rows = [np.concatenate(real, 1)]
    for k, name in enumerate(args.pipelines):
        pipe = ReportToCXRPipeline.from_pretrained(name)
        pipe.set_progress_bar_config(disable=True)
        if k == 0:
            rec = reconstruct(pipe.vae, torch.from_numpy(np.stack(real))[:, None] * 2 - 1)
            rows.append(np.concatenate([(r[0].numpy() + 1) / 2 for r in rec], 1))
        images = pipe([r["report"] for r in studies], num_inference_steps=args.steps, guidance_scale=args.guidance,
                      generator=torch.Generator().manual_seed(args.seed), output_type="pt").images
        rows.append(np.concatenate([im[0].numpy() for im in images], 1))
    sheet = np.concatenate(rows, 0)
    Image.fromarray(np.round(sheet * 255).astype(np.uint8)).save(args.out)
    print(json.dumps({"studies": [r["id"] for r in studies], "rows": ["real", "reconstruction", *args.pipelines],
                      "out": args.out}))


if __name__ == "__main__":
    main()
