"""The autoencoder's ceiling per finding: a judge's AUROC on real test images and on their reconstructions.

    python benchmarks/autoencoder_judge.py --vae runs/zoo/autoencoder128/best --judge zoo:judge128 \
        --data runs/zoo/data/synthcxr128_rare_test --n 3000 \
        --out benchmarks/results/autoencoder128_judge_synthcxr128_cpu2.json

``--zoo-results FILE`` (with ``--vae zoo:NAME``) also merges the scores into the zoo results file that NAME's model
card quotes (``radloop zoo card NAME``).

Everything a latent diffusion model draws passes through its autoencoder's decoder, so a finding the judge no
longer reads on *reconstructions* of real images cannot be read on generated ones either (issue 36: "choose the
latent design by the autoencoder's per-finding judge AUROC on reconstructions"). The studies scored: the first
``--n`` of the test split plus every test study with one of the ``--rare`` findings (so that each has 100+
positives on the large rare test set), each read by the judge as it is and after encode -> decode (posterior
mean). Reported: per finding the two AUROCs and their gap, the mAUC gap, PSNR / SSIM, seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL
from judge_scale import auroc_by_finding, positives_by_finding

from evaluation.classifier import Judge
from evaluation.image_eval import load_image_set
from radloop.zoo import merge_results
from report2image.autoencoder import reconstruct
from shared.labels import CHEXPERT_LABELS
from shared.metrics import multilabel_auroc
from shared.metrics.image import psnr, ssim_map
from shared.zoo import resolve_zoo

logger = logging.getLogger("autoencoder_judge")
RARE = ["Fracture", "Pneumothorax", "Lung Lesion"]


def selection(labels: np.ndarray, n: int, rare: list[str]) -> list[int]:
    """The first ``n`` rows and every row positive for one of ``rare``, in order."""
    keep = set(range(min(n, len(labels))))
    for name in rare:
        keep |= set(np.flatnonzero(labels[:, CHEXPERT_LABELS.index(name)] == 1).tolist())
    return sorted(keep)


@torch.no_grad()
def score(vae: AutoencoderKL, judge: Judge, images: torch.Tensor, labels: np.ndarray) -> dict[str, Any]:
    """Images (N, 1, S, S) in [0, 1] and their labels (N, 14): the judge on them and on their reconstructions."""
    start = time.perf_counter()
    recon = (reconstruct(vae, images * 2 - 1, batch_size=32) + 1) / 2
    seconds = time.perf_counter() - start
    real, rec = (multilabel_auroc(judge(x).numpy(), labels, CHEXPERT_LABELS) for x in (images, recon))
    per_real, per_rec = auroc_by_finding(real), auroc_by_finding(rec)
    gaps = {k: round(per_real[k] - per_rec[k], 4) for k in CHEXPERT_LABELS if per_real[k] is not None}
    return {"studies": len(labels), "positives": positives_by_finding(labels),
            "psnr": round(float(psnr(recon, images).mean()), 3),
            "ssim": round(float(ssim_map(recon, images).flatten(1).mean(1).mean()), 4),
            "judge_mauc_real": round(real["mauc"], 4), "judge_mauc_reconstructed": round(rec["mauc"], 4),
            "mauc_gap": round(real["mauc"] - rec["mauc"], 4), "largest_finding_gap": max(gaps.values()),
            "auroc_real": per_real, "auroc_reconstructed": per_rec, "gap": gaps,
            "reconstruction_seconds": round(seconds, 1)}


def zoo_row(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The scores a zoo autoencoder's card quotes: ``{entry: {metric: value, ..., "command"}}``."""
    keep = ("psnr", "ssim", "judge_mauc_real", "judge_mauc_reconstructed", "mauc_gap", "largest_finding_gap",
            "auroc_reconstructed", "gap", "command")
    return {result["vae"].removeprefix("zoo:"): {"test_data": result["data"], **{k: result[k] for k in keep}}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae", required=True, help="an AutoencoderKL folder or zoo: name")
    p.add_argument("--judge", required=True, help="a judge folder or zoo: name (trained at the images' size)")
    p.add_argument("--data", required=True, type=Path, help="a SynthCXR folder; its test split is scored")
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--rare", nargs="*", default=RARE)
    p.add_argument("--out", type=Path)
    p.add_argument("--zoo-results", dest="zoo_results", type=Path,
                   help="also merge the scores into this zoo results file (e.g. zoo/synthcxr128/scores.json)")
    args = p.parse_args(argv)
    if args.zoo_results and not args.vae.startswith("zoo:"):
        p.error(f"--zoo-results needs --vae zoo:NAME (the entry whose card quotes the scores), got {args.vae!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(0)
    vae = AutoencoderKL.from_pretrained(resolve_zoo(args.vae)).eval()
    judge = Judge.from_pretrained(args.judge)
    size = int(vae.config.sample_size)
    test = load_image_set(args.data / "annotation.json", "test", size, "file")
    keep = selection(test["labels"], args.n, args.rare)
    result = {"benchmark": "autoencoder_judge", "machine": "2-core x86_64 CPU", "vae": args.vae, "judge": args.judge,
              "data": str(args.data), "size": size,
              "command": "python benchmarks/autoencoder_judge.py " + " ".join(sys.argv[1:] if argv is None else argv),
              **score(vae, judge, test["images"][keep], test["labels"][keep])}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    if args.zoo_results:
        merge_results("entries", zoo_row(result), args.zoo_results)


if __name__ == "__main__":
    main()
