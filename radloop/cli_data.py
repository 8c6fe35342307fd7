"""``radloop data ...``: importing the official releases, preparing images, the IU report export, the tokenizer,
SynthCXR's finding masks."""

from __future__ import annotations

import argparse
import time

from shared.data.errors import DataError

from .cli_common import echo as _echo
from .cli_common import outside_root_flag as _outside_root_flag

__all__ = ["add_data"]


def cmd_iu_reports(args: argparse.Namespace) -> int:
    from shared.data.iu_xray import write_iu_reports

    count = write_iu_reports(args.out, args.archive)
    _echo(f"wrote {count} IU X-ray reports to {args.out}")
    return 0


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from shared.data.dataset import load_records
    from shared.text.tokenizer import ReportTokenizer

    records = [r for r in load_records(args.annotation) if r.get("split", "train") == "train"]
    if not records:
        raise DataError(f"{args.annotation} has no training studies to fit a tokenizer on")
    reports = [r["report"] for r in records]
    if args.iu_reports:
        from shared.data.iu_xray import read_iu_reports, split_iu_reports

        # the training split of the IU X-ray reports only: their test split stays out of every training
        reports += [r.text for r in split_iu_reports(read_iu_reports(args.archive))["train"]]
    tok = ReportTokenizer.fit(reports, min_freq=args.min_freq, dataset=args.dataset)
    path = tok.save_pretrained(args.out)
    _echo(f"wrote {path} ({len(tok)} tokens from {len(reports)} training reports)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from shared.data.prepare import prepare_dataset

    start = time.perf_counter()
    summary = prepare_dataset(args.annotation, args.out, args.size, args.workers, args.image_root,
                              args.on_bad_image, progress=not args.quiet,
                              allow_outside_root=args.allow_outside_root)
    _echo(f"prepared {summary['studies']} studies in {args.out} at {args.size} px in "
          f"{time.perf_counter() - start:.1f} s ({summary['written']} images written, "
          f"{summary['skipped_existing']} already there, {summary['bad_images']} unreadable)")
    return 0


def cmd_finding_masks(args: argparse.Namespace) -> int:
    from synthcxr.finding_masks import write_finding_masks

    start = time.perf_counter()
    out = write_finding_masks(args.data, args.findings, args.splits, args.threshold, args.dilate)
    _echo(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from shared.data.importers import import_iu_xray, import_mimic_cxr

    start = time.perf_counter()
    common = dict(size=args.size, sections=args.sections, max_views=args.max_views, workers=args.workers,
                  on_bad_image=args.on_bad_image, progress=not args.quiet)
    if args.data_verb == "iu-xray":
        summary = import_iu_xray(args.reports, args.images, args.out, **common)
    else:
        summary = import_mimic_cxr(args.root, args.out, reports=args.reports, **common)
    counts = summary["studies"]
    left = ", ".join(f"{n} {why}" for why, n in summary["left_out"].items() if n) or "none"
    _echo(f"imported {sum(counts.values())} studies (train/val/test {counts['train']}/{counts['val']}/"
          f"{counts['test']}) into {args.out} in {time.perf_counter() - start:.1f} s; {summary['written']} images "
          f"written, {summary['skipped_existing']} already there, {summary['bad_images']} unreadable; left out: {left}")
    return 0


def _import_flags(p: argparse.ArgumentParser, max_views: int) -> None:
    p.add_argument("--out", required=True, help="output folder (annotation.json, images/, import_summary.json)")
    p.add_argument("--size", type=int, default=512, help="shorter side of the written PNGs (0: keep; never grown)")
    p.add_argument("--sections", choices=("findings", "findings+impression"), default="findings",
                   help="the report text (R2Gen: findings)")
    p.add_argument("--max-views", dest="max_views", type=int, default=max_views, help="views kept per study")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0: this process)")
    p.add_argument("--on-bad-image", dest="on_bad_image", choices=("raise", "skip"), default="raise",
                   help="a missing or unreadable image stops the import (raise) or leaves its study out (skip)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)


def _add_importers(data: argparse._SubParsersAction) -> None:
    p = data.add_parser("iu-xray", help="import Open-i's IU X-ray release (NLMCXR_reports.tgz + NLMCXR_png)",
                        description="R2Gen's protocol: reports with findings and two images; the suite's "
                                    "report-id split. Resumable: a rerun skips finished images.")
    p.add_argument("--reports", help="NLMCXR_reports.tgz (default: the copy in the torchxrayvision wheel)")
    p.add_argument("--images", required=True, help="the folder NLMCXR_png.tgz was extracted into")
    _import_flags(p, max_views=2)
    p = data.add_parser("mimic-cxr", help="import MIMIC-CXR-JPG 2.x (official split, a frontal view, CheXpert labels)",
                        description="One entry per study: the official split, PA (else AP) view, the FINDINGS "
                                    "section; labels.csv from the CheXpert file. Resumable.")
    p.add_argument("--root", required=True, help="the MIMIC-CXR-JPG folder (the .csv.gz files and files/)")
    p.add_argument("--reports", help="mimic-cxr-reports.zip or its folder (default: ROOT/mimic-cxr-reports.zip)")
    _import_flags(p, max_views=1)


def _add_finding_masks(data: argparse._SubParsersAction) -> None:
    from synthcxr.finding_masks import RARE_FINDINGS

    p = data.add_parser("finding-masks", help="where each SynthCXR study's findings are, for a region-weighted "
                                              "diffusion loss (data.region_masks)",
                        description="Renders each study again without each chosen finding and keeps the pixels "
                                    "that change: DATA/finding_masks/<study>.png and DATA/finding_masks.json.")
    p.add_argument("data", help="a SynthCXR folder (radloop synth --out)")
    p.add_argument("--findings", nargs="+", default=list(RARE_FINDINGS), help="findings the masks cover")
    p.add_argument("--splits", nargs="+", default=["train"], help="splits to mask (training only by default)")
    p.add_argument("--threshold", type=float, default=0.01, help="smallest pixel change (images in [0, 1])")
    p.add_argument("--dilate", type=int, default=1, help="pixels the mask grows by")
    p.set_defaults(func=cmd_finding_masks)


def add_data(verbs: argparse._SubParsersAction) -> None:
    """`radloop data ...`: preparing a data set, the IU X-ray report export and the tokenizer."""
    data = verbs.add_parser("data", help="data utilities").add_subparsers(dest="data_verb", metavar="<what>",
                                                                          required=True)
    p = data.add_parser("iu-reports", help="export the IU X-ray reports shipped in the torchxrayvision wheel",
                        description="Parse the 3,955 OpenI reports into findings, impression, MeSH terms "
                                    "and image ids.")
    p.add_argument("--out", required=True, help="output .json or .jsonl")
    p.add_argument("--archive", help="path to NLMCXR_reports.tgz (default: found in the torchxrayvision wheel)")
    p.set_defaults(func=cmd_iu_reports)
    p = data.add_parser("tokenizer", help="fit the word-level tokenizer on the training reports of an annotation")
    p.add_argument("--annotation", required=True, help="annotation.json / .csv / .jsonl")
    p.add_argument("--out", required=True, help="output folder for report_tokenizer.json")
    p.add_argument("--min-freq", dest="min_freq", type=int, default=3, help="R2Gen: 3 (IU X-ray), 10 (MIMIC-CXR)")
    p.add_argument("--dataset", choices=("iu_xray", "mimic_cxr"), default="iu_xray", help="cleaning rules")
    p.add_argument("--iu-reports", dest="iu_reports", action="store_true",
                   help="also fit on the training split of the IU X-ray reports (real wording; CC BY-NC-ND 4.0)")
    p.add_argument("--archive",
                   help="NLMCXR_reports.tgz for --iu-reports (default: found in the torchxrayvision wheel)")
    p.set_defaults(func=cmd_tokenizer)
    p = data.add_parser("prepare", help="decode and resize every image once (grey PNG) for training",
                        description="Writes OUT/images/ (shorter side SIZE, aspect kept), OUT/annotation.json "
                                    "(written last) and labels.csv; a rerun skips finished images.")
    p.add_argument("--annotation", required=True, help="annotation.json / .csv / .jsonl")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, default=256, help="shorter side in pixels (images never grow)")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0: this process)")
    p.add_argument("--image-root", dest="image_root", help="folder the image paths are relative to")
    _outside_root_flag(p)
    p.add_argument("--on-bad-image", dest="on_bad_image", choices=("raise", "skip"), default="raise")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)
    _add_importers(data)
    _add_finding_masks(data)
