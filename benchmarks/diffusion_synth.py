"""Score a trained report -> CXR pipeline on SynthCXR and time its samplers. Prints one JSON object.

    python benchmarks/diffusion_synth.py --pipeline runs/diffusion/best --data runs/bench/synthcxr64 \
        --classifier runs/bench/clf64/best --backbone runs/backbone/best [--n 300] [--run-dir runs/diffusion]

* generation from test reports (DPM-Solver++ 20 steps, guidance 3): classifier mAUC against the
  generator's ground-truth image labels (beside the classifier's mAUC on the real test images, the
  ceiling), FID/KID in the backbone's image-embedding space and in the judge's pooled features, each beside
  its real-vs-real split-half floor;
* counterfactual edits against SynthCXR's true counterfactuals: flip rate, SSIM to the truth and
  outside the true edit's region, for plain DDIM inversion, masked editing (DiffEdit mask, no
  identity tokens) and masked editing with the source's identity tokens;
* initial-noise optimisation: AUC of the rarest training findings, plain vs optimised sampling;
* noise filtering: precision/recall of the studies the filter flagged against SynthCXR's
  degraded / wrong-report flags (from ``<run-dir>/noise_filter.json``);
* images/s of 20-step DPM-Solver++ and 50-step DDIM.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler
from omegaconf import OmegaConf

from evaluation.classifier import Judge
from evaluation.image_eval import build_feature_extractor, load_image_set
from evaluation.images import extract_features, fid_report
from evaluation.loop import counterfactual_metrics
from radloop.zoo import merge_results
from report2image import ReportToCXRPipeline
from report2image.autoencoder import latent_space_mismatch
from shared.io import read_json
from shared.labels import CHEXPERT_LABELS
from shared.metrics import multilabel_auroc
from shared.zoo import ENTRY_FILE, resolve_zoo
from synthcxr import counterfactual_edits, read_attributes


def generate(pipe: ReportToCXRPipeline, reports: list[str], steps: int, guidance: float, seed: int,
             batch: int = 50, latents: torch.Tensor | None = None) -> torch.Tensor:
    """[0, 1] images (N, 1, S, S)."""
    return pipe.generate_batched(reports, batch, seed, steps, guidance, latents=latents, output_type="pt")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--data", default="runs/bench/synthcxr64")
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--backbone", required=True, help="RadCLIP folder whose image tower gives FID features")
    parser.add_argument("--run-dir", dest="run_dir", help="the training run (for noise_filter.json)")
    parser.add_argument("--n", type=int, default=300, help="test reports to generate from")
    parser.add_argument("--edits", type=int, default=64, help="counterfactual edits scored (0: skip them)")
    parser.add_argument("--guidance", type=float, default=3.0, help="the scale when no --guidance-grid is given")
    parser.add_argument("--guidance-grid", dest="guidance_grid", type=float, nargs="*", default=[],
                        help="scales tried on validation reports; the best (judge mAUC) is used on the test set")
    parser.add_argument("--val-n", dest="val_n", type=int, default=100)
    parser.add_argument("--save-guidance", dest="save_guidance",
                        help="write the scale --guidance-grid picks on validation into this pipeline folder's "
                             "sampling_config.json (a run's best/ before `radloop zoo export`), other settings kept")
    parser.add_argument("--val-data", dest="val_data", help="the data whose val split tunes guidance (default --data)")
    parser.add_argument("--autoencoder-n", dest="autoencoder_n", type=int, default=0,
                        help="test images whose reconstructions are scored (0: skip)")
    parser.add_argument("--vae", help="score with this autoencoder in place of the pipeline's (a fine-tuned decoder "
                                      "of the same latents: `radloop train autoencoder` with model.decoder_only)")
    parser.add_argument("--autoencoder-only", dest="autoencoder_only", action="store_true",
                        help="score the reconstructions (--autoencoder-n) and stop")
    parser.add_argument("--edit-strengths", dest="edit_strengths", type=float, nargs="+", default=[0.7])
    parser.add_argument("--edit-steps", dest="edit_steps", type=int, default=50)
    parser.add_argument("--edit-guidance", dest="edit_guidance", type=float, default=2.0,
                        help="guidance of the edits (the zoo's: 5, with strength 0.9, picked on validation edits)")
    parser.add_argument("--edit-mask-threshold", dest="edit_mask_threshold", type=float, default=3.0,
                        help="threshold ratio of the DiffEdit mask (higher: tighter)")
    parser.add_argument("--edit-mask-dilate", dest="edit_mask_dilate", type=int, default=0,
                        help="latent pixels the DiffEdit mask is grown by")
    parser.add_argument("--train-data", dest="train_data",
                        help="the data the pipeline trained on: its train split names the rarest findings and "
                             "holds the noise filter's truth (default --data)")
    parser.add_argument("--ddim-steps", dest="ddim_steps", type=int, default=50, help="DDIM steps of the speed row")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--zoo-results", dest="zoo_results",
                        help="merge the zoo entries' measurements (the pipeline's, the classifier's, the "
                             "autoencoder's) into this zoo results file, which the model cards quote "
                             "(radloop zoo card NAME)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-noise-opt", dest="skip_noise_opt", action="store_true")
    parser.add_argument("--rare-plain-only", dest="rare_plain_only", action="store_true",
                        help="the rare-finding study without the noise optimisation: the judge's AUROC per rare "
                             "finding on plain generations only (to compare generators; a fraction of the time)")
    parser.add_argument("--rare-data", dest="rare_data",
                        help="the data whose test reports the initial-noise optimisation study draws from (default "
                             "--data; configs/zoo/rare_test_data.yaml holds 100+ of each rare finding)")
    parser.add_argument("--rare-positives", dest="rare_positives", type=int,
                        help="test reports per rare finding (default: every one)")
    parser.add_argument("--rare-negatives", dest="rare_negatives", type=int,
                        help="test reports with none of the rare findings (default: as many as the positives)")
    args = parser.parse_args()
    if args.autoencoder_only and (not args.autoencoder_n or args.zoo_results):
        parser.error("--autoencoder-only needs --autoencoder-n and no --zoo-results (the cards need every block)")
    if args.save_guidance and not args.guidance_grid:
        parser.error("--save-guidance writes the scale --guidance-grid picks on validation: give a grid")
    return args


def swap_autoencoder(pipe: ReportToCXRPipeline, path: str) -> None:
    """Put the autoencoder at ``path`` into ``pipe``; refused unless it encodes exactly as the pipeline's
    (:func:`~report2image.autoencoder.latent_space_mismatch`: a fine-tuned decoder on the same encoder)."""
    vae = AutoencoderKL.from_pretrained(resolve_zoo(path)).to(pipe.device, pipe.vae.dtype)
    why = latent_space_mismatch(pipe.vae, vae)
    if why:
        raise SystemExit(f"--vae {path}: {why}: not the latent space the pipeline's UNet learnt")
    pipe.register_modules(vae=vae)


def _per_finding(auc: dict[str, float]) -> dict[str, float]:
    """``multilabel_auroc``'s ``auroc/<finding>`` entries as {finding: AUROC rounded to 3 places}."""
    return {k.split("/", 1)[1]: round(v, 3) for k, v in auc.items() if k.startswith("auroc/")}


def score_generation(pipe: ReportToCXRPipeline, real: dict, n: int, judge: Judge, backbone: str, guidance: float,
                     seed: int, ddim_steps: int = 50) -> dict:
    """Generation from the first ``n`` test reports: speed, the judge's mAUC, FID; DDIM speed on a subset."""
    reports, labels = real["reports"][:n], real["labels"][:n]
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    start = time.perf_counter()
    fake = generate(pipe, reports, 20, guidance, seed)
    out: dict = {"dpm20_images_per_s": round(n / (time.perf_counter() - start), 2)}
    gen_auc = multilabel_auroc(judge(fake).numpy(), labels, CHEXPERT_LABELS)
    real_auc = multilabel_auroc(judge(real["images"][:n]).numpy(), labels, CHEXPERT_LABELS)
    out.update(n_generated=n, mauc_generated=gen_auc["mauc"], mauc_real_ceiling=real_auc["mauc"],
               auroc_generated=_per_finding(gen_auc))
    for space, extractor in (("backbone", build_feature_extractor(f"backbone:{backbone}")),
                             ("judge", build_feature_extractor("classifier", judge.classifier))):
        fid = fid_report(extract_features(extractor, real["images"]), extract_features(extractor, fake))
        out.update({f"{space}_{k}": v for k, v in fid.items()})
    # samplers: 20-step DPM-Solver++ above; DDIM (50 steps unless told) on a subset
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    m = min(50, n)
    start = time.perf_counter()
    generate(pipe, reports[:m], ddim_steps, guidance, seed)
    out[f"ddim{ddim_steps}_images_per_s"] = round(m / (time.perf_counter() - start), 2)
    return out


def flip_rate_by_edit(flips: list[float], added: list[list[str]], removed: list[list[str]]) -> dict[str, dict]:
    """Flip rate per kind of edit ("+Pneumothorax", "-Cardiomegaly", ...): which findings the edits fail to draw
    or erase. {kind: {"n": edits, "flip_rate": rate}}, most frequent kind first."""
    groups: dict[str, list[float]] = {}
    for flip, add, rem in zip(flips, added, removed, strict=True):
        kind = " ".join([f"+{n}" for n in add] + [f"-{n}" for n in rem])
        groups.setdefault(kind, []).append(flip)
    return {k: {"n": len(v), "flip_rate": round(float(np.mean(v)), 3)}
            for k, v in sorted(groups.items(), key=lambda kv: -len(kv[1]))}


#: counterfactual editing variants: (name, mask, use_identity)
EDIT_VARIANTS = (("inversion", None, True), ("masked", "auto", False), ("masked_identity", "auto", True))


def score_counterfactuals(pipe: ReportToCXRPipeline, data: Path, edits_n: int, judge: Judge, seed: int,
                          strengths: list[float], steps: int, guidance: float = 2.0, mask_threshold_ratio: float = 3.0,
                          mask_dilate: int = 0) -> dict:
    """Each editing variant at each strength against the true counterfactual, and the unchanged source."""
    edits = counterfactual_edits(data, "test", edits_n, seed)
    source = torch.stack([torch.from_numpy(e.source)[None] for e in edits])
    truth = torch.stack([torch.from_numpy(e.true_cf)[None] for e in edits])
    added, removed = [e.added for e in edits], [e.removed for e in edits]
    out = {}
    for strength in strengths:
        for name, mask, identity in EDIT_VARIANTS:
            if identity and not pipe.conditioner.config.use_identity and name != "inversion":
                continue
            start = time.perf_counter()
            edit = pipe.counterfactual(source, [e.new_report for e in edits], [e.source_report for e in edits],
                                       strength=strength, num_inference_steps=steps, guidance_scale=guidance,
                                       output_type="pt", mask=mask, use_identity=identity,
                                       mask_threshold_ratio=mask_threshold_ratio, mask_dilate=mask_dilate)
            cf = counterfactual_metrics(source, edit.images, truth, judge, added, removed)
            row = {k: v for k, v in cf.items() if k != "per_edit"}
            row["flip_rate_by_edit"] = flip_rate_by_edit(cf["per_edit"]["flip"], added, removed)
            row["seconds_per_edit"] = round((time.perf_counter() - start) / len(edits), 2)
            if edit.masks is not None:
                row["mask_area"] = float(edit.masks.mean())
            out[f"counterfactual_{name}_strength_{strength}"] = row
    source_cf = counterfactual_metrics(source, source, truth, judge, added, removed)
    out["counterfactual_identity_baseline"] = {k: source_cf[k] for k in ("flip_rate", "ssim_to_true_cf")}
    # the ceiling: how often the judge reads the true counterfactual (SynthCXR's own redraw) as flipped
    flips = counterfactual_metrics(source, truth, truth, judge, added, removed)["per_edit"]["flip"]
    out["counterfactual_true_cf_ceiling"] = {"flip_rate": float(np.mean(flips)),
                                             "flip_rate_by_edit": flip_rate_by_edit(flips, added, removed)}
    out["counterfactual_guidance"] = guidance
    out["counterfactual_mask"] = {"threshold_ratio": mask_threshold_ratio, "dilate": mask_dilate}
    return out


def clean_renders(data: Path, ids: list[str], size: int) -> tuple[torch.Tensor, list[int]]:
    """Noise-free SynthCXR renders (K, 1, S, S) in [0, 1] of the studies among ``ids`` that carry no
    degradation, and their positions in ``ids``: what the images show without the quantum noise."""
    from synthcxr.renderer import render
    from synthcxr.world import Acquisition, Finding, Patient

    records = {r["id"]: r for r in read_attributes(data)}
    keep, images = [], []
    for i, study in enumerate(ids):
        rec = records.get(study)
        if rec is None or rec.get("degradation"):
            continue
        clean = render(Patient.from_dict(rec["patient"]), [Finding.from_dict(f) for f in rec["findings"]],
                       Acquisition.from_dict(rec["acquisition"]), size, "frontal", noise=False)
        keep.append(i)
        images.append(torch.from_numpy(clean)[None])
    return torch.stack(images), keep


def score_autoencoder(pipe: ReportToCXRPipeline, real: dict, n: int, judge: Judge, data: Path) -> dict:
    """PSNR / SSIM of ``n`` test reconstructions and the judge's mAUC on them beside the real images'; the
    same scores of the noise-free renders against the real images (what an autoencoder that keeps the
    anatomy and findings but not the quantum noise reaches) and of the reconstructions against them."""
    from report2image.autoencoder import reconstruct
    from shared.metrics.image import psnr, ssim_map

    def pair(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        return {"psnr": float(psnr(a, b).mean()), "ssim": float(ssim_map(a, b).flatten(1).mean(1).mean())}

    images, labels = real["images"][:n], real["labels"][:n]
    recon = (reconstruct(pipe.vae, images * 2 - 1) + 1) / 2
    scores = pair(recon, images)  # what report2image.autoencoder.reconstruction_scores computes, without a 2nd pass
    auc_recon = multilabel_auroc(judge(recon).numpy(), labels, CHEXPERT_LABELS)
    auc_real = multilabel_auroc(judge(images).numpy(), labels, CHEXPERT_LABELS)
    clean, keep = clean_renders(data, real["ids"][:n], images.shape[-1])

    # per finding too: which findings the autoencoder loses (thin lines, fine texture)
    return {"n": n, **scores, "judge_mauc_reconstructed": auc_recon["mauc"], "judge_mauc_real": auc_real["mauc"],
            "mauc_gap": auc_real["mauc"] - auc_recon["mauc"], "auroc_reconstructed": _per_finding(auc_recon),
            "auroc_real": _per_finding(auc_real), "n_undegraded": len(keep),
            "noise_free_render_vs_real": pair(clean, images[keep]),
            "reconstruction_vs_noise_free_render": pair(recon[keep], clean)}


def tune_guidance(pipe: ReportToCXRPipeline, data: Path, grid: list[float], n: int, judge: Judge, seed: int
                  ) -> dict[str, Any]:
    """The judge's mAUC on images generated from ``n`` validation reports at each guidance scale."""
    val = load_image_set(data / "annotation.json", "val", pipe.image_size, "file")
    reports, labels = val["reports"][:n], val["labels"][:n]
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    per = {str(g): multilabel_auroc(judge(generate(pipe, reports, 20, g, seed + 99)).numpy(), labels,
                                    CHEXPERT_LABELS)["mauc"] for g in grid}
    best = max(grid, key=lambda g: per[str(g)])
    return {"n_val": len(reports), "mauc_by_scale": per, "best": best}


def rare_selection(labels: np.ndarray, idx: list[int], positives: int | None = None, negatives: int | None = None
                   ) -> tuple[list[int], list[int]]:
    """Rows of ``labels`` (N, C) for the rare-finding study: the first rows positive for each column of ``idx``
    until that column has ``positives`` of them (all when None; a row may count for two), and the first
    ``negatives`` rows positive for none (default: as many as the positives, at least 16)."""
    hit = labels[:, idx] == 1  # (N, K)
    taken = np.zeros(len(labels), dtype=bool)
    pos: list[int] = []
    for k in range(len(idx)):
        want = len(labels) if positives is None else max(positives - int(hit[taken, k].sum()), 0)
        rows = np.flatnonzero(hit[:, k] & ~taken)[:want]
        taken[rows] = True
        pos += rows.tolist()
    neg = np.flatnonzero(~hit.any(axis=1)).tolist()
    return pos, neg[: negatives or max(len(pos), 16)]


def save_guidance(folder: str | Path, guidance: float) -> Path:
    """Set ``guidance_scale`` in ``folder``'s saved sampling defaults (the pipeline's ``sampling_config.json``),
    keeping its other settings, so that the scale picked on validation travels with the model."""
    from report2image.pipeline import SAMPLING_FILE, SamplingConfig
    from shared.saved_settings import load_settings, save_settings

    sampling = load_settings(folder, SAMPLING_FILE, SamplingConfig)
    sampling.guidance_scale = float(guidance)
    return save_settings(folder, SAMPLING_FILE, sampling)


def score_noise_optimisation(pipe: ReportToCXRPipeline, train_data: Path, real: dict, judge: Judge, guidance: float,
                             seed: int, positives: int | None = None, negatives: int | None = None,
                             optimise: bool = True) -> dict:
    """Initial-noise optimisation on the 3 rarest training findings: the judge's AUC with and without
    (``optimise=False``: without only).

    The reports are the test reports of ``real`` with one of those findings -- at most ``positives`` per finding,
    all when None -- and ``negatives`` reports with none of them (default: as many as the positives)."""
    train_counts = {name: 0 for name in CHEXPERT_LABELS}
    for rec in read_attributes(train_data):
        if rec["split"] == "train":
            for name, v in rec["image_labels"].items():
                train_counts[name] += int(v == 1)
    rare = [k for k, v in sorted(train_counts.items(), key=lambda kv: kv[1]) if k != "No Finding" and v > 0][:3]
    idx = [CHEXPERT_LABELS.index(r) for r in rare]
    pos, neg = rare_selection(real["labels"], idx, positives, negatives)
    sel = pos + neg
    sub_reports = [real["reports"][i] for i in sel]
    sub_labels = real["labels"][sel]
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    plain = generate(pipe, sub_reports, 20, guidance, seed + 7)
    auc_plain = multilabel_auroc(judge(plain).numpy(), sub_labels, CHEXPERT_LABELS)
    per = {name: {"positives": int((sub_labels[:, j] == 1).sum()), "auc_plain": round(auc_plain[f"auroc/{name}"], 3)}
           for name, j in zip(rare, idx, strict=True)}
    counts = {"n_images": len(sel), "n_without_rare_findings": len(neg)}
    if not optimise:
        return {"rare_findings": per, **counts}
    start = time.perf_counter()
    z = torch.cat([pipe.optimize_initial_noise(sub_reports[k:k + 25], steps=5, lr=0.05, short_steps=4,
                                               guidance_scale=guidance,
                                               generator=torch.Generator().manual_seed(seed + 7 + k))
                   for k in range(0, len(sub_reports), 25)])
    opt_seconds = time.perf_counter() - start
    optimised = generate(pipe, sub_reports, 20, guidance, seed + 7, batch=25, latents=z)
    auc_opt = multilabel_auroc(judge(optimised).numpy(), sub_labels, CHEXPERT_LABELS)
    for name, row in per.items():
        row["auc_optimised"] = round(auc_opt[f"auroc/{name}"], 3)
    return {"rare_findings": per, **counts, "seconds_per_image": round(opt_seconds / len(sel), 2),
            "score": "backbone image-report cosine (not the judging classifier)"}


def score_noise_filter(run_dir: Path, data: Path) -> dict:
    """Flagged training studies against SynthCXR's degraded / wrong-report truth."""
    flagged = set(json.loads((run_dir / "noise_filter.json").read_text())["flagged"])
    noisy = {r["id"] for r in read_attributes(data)
             if r["split"] == "train" and (r.get("degradation") or r.get("wrong_report"))}
    hit = len(flagged & noisy)
    n_train = sum(r["split"] == "train" for r in read_attributes(data))
    return {"flagged": len(flagged), "noisy_in_train": len(noisy), "train": n_train,
            "precision": round(hit / len(flagged), 3) if flagged else None,
            "recall": round(hit / len(noisy), 3) if noisy else None,
            "base_rate": round(len(noisy) / n_train, 3)}


def _r(x: Any) -> Any:
    return round(x, 4) if isinstance(x, float) else x


def entry_name(spec: str) -> str:
    """The zoo entry a model argument names: ``zoo:NAME`` or a zoo folder -> NAME; any other saved folder keeps
    its path, as ``zoo_synth.py`` names runs."""
    if spec.startswith("zoo:"):
        return spec.removeprefix("zoo:")
    return Path(spec).name if (Path(spec) / ENTRY_FILE).is_file() else spec


def autoencoder_entry(pipeline: str, vae: str | None) -> str:
    """The zoo entry whose card the autoencoder's scores belong to: ``--vae``'s (:func:`entry_name`), else the
    one the pipeline entry names as its vae (``radloop zoo swap-decoder``), else the ``model.autoencoder`` of the
    recipe the pipeline entry was trained by, else that of the training run the pipeline was saved by
    (``<run>/best`` beside ``<run>/config.yaml``), else ``autoencoder64``."""
    if vae:
        return entry_name(vae)
    folder = Path(resolve_zoo(pipeline))
    entry, run_config = folder / ENTRY_FILE, folder.parent / "config.yaml"
    meta = read_json(entry) if entry.is_file() else {}
    named = meta.get("vae", {}).get("entry")
    if not named and meta.get("recipe") and Path(meta["recipe"]).is_file():
        named = OmegaConf.select(OmegaConf.load(meta["recipe"]), "model.autoencoder")
    if not named and run_config.is_file():
        # an ablation arm or any other training run: it decodes with the autoencoder it was trained on
        named = OmegaConf.select(OmegaConf.load(run_config), "model.autoencoder")
    return named.removeprefix("zoo:") if named else "autoencoder64"


def zoo_entry_metrics(result: dict, command: str) -> dict[str, dict]:
    """The measurements of each diffusion zoo entry, as the model cards list them."""
    entries: dict[str, dict] = {}
    ae = result.get("autoencoder")
    if ae:
        name = result["autoencoder_entry"]
        entries[name] = {"psnr_db": _r(ae["psnr"]), "ssim": _r(ae["ssim"]),
                         "judge_mauc_reconstructed": _r(ae["judge_mauc_reconstructed"]),
                         "judge_mauc_real": _r(ae["judge_mauc_real"]),
                         "noise_free_render_vs_real": {k: _r(v) for k, v in ae["noise_free_render_vs_real"].items()},
                         "command": command}
    entries[entry_name(result["classifier"])] = {"mauc_real_test": _r(result["mauc_real_ceiling"]),
                                                 "command": command}
    ldm = {"guidance_scale": result["guidance_scale"], "mauc_generated": _r(result["mauc_generated"]),
           # per finding: the targets are per finding, and the rare ones are where a generator fails
           "auroc_generated": {k: v for k, v in result.get("auroc_generated", {}).items() if v == v},  # NaN: none
           "backbone_fid_over_floor": _r(result["backbone_fid_over_floor"]),
           "judge_fid_over_floor": _r(result.get("judge_fid_over_floor")),
           "dpm20_images_per_s": result["dpm20_images_per_s"], "ddim50_images_per_s": result.get("ddim50_images_per_s")}
    for key, row in result.items():
        if key.startswith("counterfactual_") and "_strength_" in key:  # the editing variants' rows
            ldm[key.removeprefix("counterfactual_")] = {k: _r(row[k]) for k in
                                                         ("flip_rate", "ssim_to_true_cf", "ssim_outside_edit")}
    if "counterfactual_true_cf_ceiling" in result:  # the flip rate the true counterfactuals themselves reach
        ldm["true_cf_flip_rate"] = _r(result["counterfactual_true_cf_ceiling"]["flip_rate"])
    rare = result.get("noise_optimisation", {}).get("rare_findings", {})
    if rare and all("auc_optimised" in x for x in rare.values()):
        ldm["rare_findings_auc_plain_to_optimised"] = {k: f"{x['auc_plain']} -> {x['auc_optimised']} "
                                                          f"({x['positives']} positives)" for k, x in rare.items()}
    entries[entry_name(result["pipeline"])] = {**ldm, "command": command}
    return entries


def _write(result: dict, out: str | None) -> None:
    """Print the result as JSON, and write it to ``out`` when given."""
    text = json.dumps(result, indent=1, default=float)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


def main() -> None:
    args = _parse_args()
    torch.manual_seed(args.seed)
    data = Path(args.data)
    args.backbone = str(resolve_zoo(args.backbone))
    pipe = ReportToCXRPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    if args.vae:
        swap_autoencoder(pipe, args.vae)
    result: dict = {"benchmark": "diffusion_synthcxr", "pipeline": args.pipeline, "classifier": args.classifier,
                    "vae": args.vae,
                    "autoencoder_entry": autoencoder_entry(args.pipeline, args.vae),
                    "machine": "2-core CPU, no GPU",
                    "conditioner": {k: pipe.conditioner.config[k]
                                    for k in ("use_refiner", "use_attributes", "use_identity")}}
    real = load_image_set(data / "annotation.json", "test", pipe.image_size, "file")
    result["prediction_type"] = pipe.scheduler.config.prediction_type
    judge = Judge.from_pretrained(args.classifier)
    # 1. the autoencoder; 2. guidance tuned on validation reports
    if args.autoencoder_n:
        result["autoencoder"] = score_autoencoder(pipe, real, min(args.autoencoder_n, len(real["reports"])), judge,
                                                  data)
    if args.autoencoder_only:
        _write(result, args.out)
        return
    if args.guidance_grid:
        val_data = Path(args.val_data) if args.val_data else data
        result["guidance_tuning"] = tune_guidance(pipe, val_data, args.guidance_grid, args.val_n, judge, args.seed)
        result["guidance_tuning"]["data"] = str(val_data)
        args.guidance = result["guidance_tuning"]["best"]
        if args.save_guidance:
            save_guidance(args.save_guidance, args.guidance)
    result["guidance_scale"] = args.guidance
    # 3. generation from test reports (judge, FID, sampler speed); 4. counterfactuals
    result.update(score_generation(pipe, real, min(args.n, len(real["reports"])), judge, args.backbone,
                                   args.guidance, args.seed, args.ddim_steps))
    if args.edits:
        result.update(score_counterfactuals(pipe, data, args.edits, judge, args.seed, args.edit_strengths,
                                            args.edit_steps, args.edit_guidance, args.edit_mask_threshold,
                                            args.edit_mask_dilate))
    train_data = Path(args.train_data) if args.train_data else data
    # 5. long-tail initial-noise optimisation; 6. the noise filter's flags
    if not args.skip_noise_opt:
        rare = load_image_set(Path(args.rare_data) / "annotation.json", "test", pipe.image_size, "file") \
            if args.rare_data else real
        result["noise_optimisation"] = score_noise_optimisation(pipe, train_data, rare, judge, args.guidance,
                                                                args.seed, args.rare_positives, args.rare_negatives,
                                                                optimise=not args.rare_plain_only)
        result["noise_optimisation"]["data"] = args.rare_data or str(data)
    if args.run_dir and (Path(args.run_dir) / "noise_filter.json").is_file():
        result["noise_filter"] = score_noise_filter(Path(args.run_dir), train_data)
    _write(result, args.out)
    if args.zoo_results:
        command = "python benchmarks/diffusion_synth.py " + " ".join(sys.argv[1:])
        merge_results("entries", zoo_entry_metrics(result, command), Path(args.zoo_results),
                      owner="diffusion_synth.py")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
