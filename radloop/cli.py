"""The ``radloop`` command line: ``radloop <verb> [--config FILE] [key=value ...]``.

Every verb is callable in-process through :func:`main` (tests do so). Bad input ends with one
line ``radloop: error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from shared.config import ConfigError, load_config, save_run_config
from shared.data.errors import DataError
from shared.io import atomic_write_text
from shared.zoo import resolve_zoo

from . import __version__
from .cli_common import echo as _echo
from .cli_common import outside_root_flag as _outside_root_flag
from .cli_common import renamed_flag, require, sampling_flags
from .cli_data import add_data as _add_data
from .cli_workflows import add_workflows

logger = logging.getLogger("radloop")

def _synth_defaults() -> dict:
    from synthcxr import SynthConfig

    return {"synth": asdict(SynthConfig())}


def cmd_synth(args: argparse.Namespace) -> int:
    from synthcxr import SynthConfig, contact_sheet, generate_dataset

    overrides = list(args.overrides)
    for flag, key in (("patients", "patients"), ("studies_per_patient", "studies_per_patient"),
                      ("size", "size"), ("seed", "seed"), ("views", "views"), ("workers", "workers")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"synth.{key}={value}")
    cfg = load_config(_synth_defaults(), args.config, overrides)
    synth = SynthConfig(**OmegaConf.to_container(cfg.synth, resolve=True))
    if args.preview:
        path = contact_sheet(args.preview, size=synth.size, seed=synth.seed)
        _echo(f"wrote contact sheet {path}")
    if args.out is None:
        if not args.preview:
            raise ConfigError("give --out DIR (and/or --preview FILE)")
        return 0
    from shared.training.lock import RunLock

    start = time.perf_counter()
    with RunLock(args.out):  # a second `radloop synth` into this folder refuses while this one runs
        summary = generate_dataset(args.out, synth, overwrite=args.overwrite, progress=not args.quiet)
        save_run_config(cfg, args.out, argv=sys.argv)
    seconds = time.perf_counter() - start
    _echo(f"wrote {summary['studies']} studies to {args.out} in {seconds:.1f} s "
          f"(train/val/test {summary['splits']['train']}/{summary['splits']['val']}/{summary['splits']['test']}, "
          f"{summary['degraded']} degraded, {summary['wrong_reports']} wrong reports)")
    return 0


def cmd_evaluate_reports(args: argparse.Namespace) -> int:
    from evaluation.reports import evaluate_reports, load_report_map, load_training_reports, markdown_table

    preds, refs = load_report_map(args.pred), load_report_map(args.ref)
    training = load_training_reports(args.train_reports) if args.train_reports else None
    metrics = evaluate_reports(preds, refs, uncertain=args.uncertain, meteor=False if args.no_meteor else None,
                               clean=args.dataset, training_reports=training)
    if args.out:
        atomic_write_text(args.out, json.dumps(metrics, indent=2, default=float) + "\n")
    _echo(markdown_table(metrics))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from shared.training import TRAINERS

    from .registries import load_registries

    load_registries()
    from shared.training.lock import RunLock

    entry = TRAINERS.get(args.train_verb)
    cfg = load_config(entry.meta["experiment"](), args.config, args.overrides)
    RunLock(cfg.train.output_dir).check()  # before this run's config replaces the running one's
    save_run_config(cfg, cfg.train.output_dir, argv=sys.argv)
    result = entry.builder(OmegaConf.to_object(cfg))
    _echo(f"{args.train_verb} trained for {result.steps} steps; best validation {entry.meta['metric']} "
          f"{result.best_metric} at step {result.best_step}; weights in {cfg.train.output_dir}/best")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from shared.registry import get_registry

    from .registries import list_families, load_registries

    load_registries()
    families = [args.family] if args.family else list_families()
    for family in families:
        registry = get_registry(family)
        names = registry.list(args.filter)
        if not names:
            continue
        _echo(f"{family}: {registry.description}")
        for name in names:
            entry = registry.get(name)
            _echo(f"  {name:<28} {entry.help}".rstrip())
    return 0


def cmd_generate_report(args: argparse.Namespace) -> int:
    import dataclasses

    from image2report.generator import ReportGenerator
    from image2report.train import generate_reports

    gen = ReportGenerator.from_pretrained(require(args, "--report-model"))
    decoding = dataclasses.replace(gen.decoding, **{k: getattr(args, k) for k in DECODING_FLAGS
                                                    if getattr(args, k) is not None})
    _echo(f"decoding: {decoding.describe()}")
    reports = generate_reports(gen, args.annotation, args.split, image_root=args.image_root,
                               allow_outside_root=args.allow_outside_root, decoding=decoding)
    atomic_write_text(args.out, json.dumps(reports, indent=1) + "\n")
    _echo(f"wrote {len(reports)} generated reports to {args.out}")
    return 0


def cmd_generate_image(args: argparse.Namespace) -> int:
    from shared.training.lock import RunLock

    reports = list(args.report or [])
    empty = next((i for i, r in enumerate(reports) if not r.strip()), None)
    if empty is not None:
        # an empty condition is the unconditional branch of classifier-free guidance: say so, never guess
        raise ValueError(f"--report number {empty + 1} is empty, which would draw an unconditional image; "
                         "pass --unconditional N to ask for N unconditional samples")
    if args.reports_file:
        reports += [line.strip() for line in Path(args.reports_file).read_text().splitlines() if line.strip()]
    reports += [""] * args.unconditional
    if not reports:
        raise ValueError("give --report TEXT (repeatable), --reports-file FILE or --unconditional N")
    pipeline = require(args, "--pipeline")
    checkpoint = resolve_zoo(pipeline)
    if not (Path(checkpoint) / "model_index.json").is_file():
        raise FileNotFoundError(f"no saved ReportToCXRPipeline in {pipeline} (model_index.json missing)")
    out = Path(args.out)
    with RunLock(out):  # two runs into one folder: the second refuses while the first runs
        _generate_images(args, reports, checkpoint, out)
    _echo(f"wrote {len(reports)} images and manifest.jsonl to {out}")
    return 0


def _generate_images(args: argparse.Namespace, reports: list[str], checkpoint: str, out: Path) -> None:
    """The images of one `radloop generate image` request and their ``manifest.jsonl``, into ``out``."""
    from .generated_images import generate_into

    names = [f"generated_{i:04d}" for i in range(len(reports))]
    request, skipped = generate_into(out, reports, names, pipeline=checkpoint, seed=args.seed,
                                     batch_size=args.batch_size, num_inference_steps=args.num_inference_steps,
                                     guidance_scale=args.guidance_scale, sampler=args.sampler)
    _echo(f"sampling: {request['sampler']}, {request['num_inference_steps']} steps, "
          f"guidance {request['guidance_scale']}")
    if skipped:
        _echo(f"{out}: skipping the batches written by an earlier run of this request ({skipped})")
    manifest = [{"id": name, "report": report, "image_path": [f"{name}.png"], "split": "test", "synthetic": True}
                for name, report in zip(names, reports, strict=True)]
    atomic_write_text(out / "manifest.jsonl", "".join(json.dumps(m) + "\n" for m in manifest))


def cmd_evaluate_images(args: argparse.Namespace) -> int:
    from evaluation.image_eval import evaluate_images
    from evaluation.reports import markdown_table

    metrics = evaluate_images(args.generated, args.real, args.real_split, args.classifier, args.features,
                              args.image_size, args.real_labels, args.min_count, args.allow_outside_root,
                              args.image_root)
    if args.out:
        atomic_write_text(args.out, json.dumps(metrics, indent=2, default=float) + "\n")
    _echo(markdown_table(metrics))
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from . import zoo

    if args.zoo_verb == "list":
        rows = [[row["name"], row["dataset"], row["trainer"],
                 f"{row['mb']:.1f} MB" if row["present"] else "not trained", row["recipe"], row["summary"]]
                for row in zoo.list_entries()]
        # columns as wide as their longest cell, so that a long entry name does not shift its row
        widths = [max(len(r[k]) for r in rows) for k in range(5)] if rows else []
        for r in rows:
            _echo(" ".join(cell.ljust(w) for cell, w in zip(r[:5], widths, strict=True)) + " " + r[5])
        return 0
    if args.zoo_verb == "train":
        target = zoo.train_entry(args.name, overrides=args.overrides)
    elif args.zoo_verb == "export":
        target = zoo.export_entry(args.name, args.run)
    elif args.zoo_verb == "swap-decoder":
        target = zoo.swap_decoder(args.name, args.source)
    else:
        target = zoo.refresh_card(args.name)
    _echo(f"zoo:{args.name} -> {target}")
    return 0


def _trainers(load: bool) -> list[tuple[str, str]]:
    """(name, help) of every trainer; without ``load`` none (importing them costs seconds)."""
    if not load:
        return []
    from shared.training import TRAINERS

    from .registries import load_registries

    load_registries()
    return [(e.name, e.help) for e in TRAINERS.entries()]


def _add_synth(verbs: argparse._SubParsersAction) -> None:
    """`radloop synth`: SynthCXR data sets and contact sheets."""
    p = verbs.add_parser("synth", help="generate a SynthCXR dataset and/or a contact sheet",
                         description="Write SynthCXR images, annotation.json, labels.csv and attributes.jsonl.")
    p.add_argument("--out", help="output folder (must be empty unless --overwrite)")
    p.add_argument("--patients", type=int)
    p.add_argument("--studies-per-patient", dest="studies_per_patient", type=int)
    p.add_argument("--size", type=int, help="image side in pixels")
    p.add_argument("--seed", type=int)
    p.add_argument("--views", type=int, choices=(1, 2), help="1: frontal; 2: frontal + lateral")
    p.add_argument("--workers", type=int, help="processes (0: up to 2)")
    p.add_argument("--preview", metavar="PNG", help="also save a contact sheet of every finding")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--config", help="YAML with a 'synth' section")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. synth.degraded_fraction=0.2")
    p.set_defaults(func=cmd_synth)


def _add_evaluate(verbs: argparse._SubParsersAction) -> None:
    """`radloop evaluate reports|images`."""
    evaluate = verbs.add_parser("evaluate", help="score generated reports or images").add_subparsers(
        dest="evaluate_verb", metavar="<what>", required=True)
    p = evaluate.add_parser("reports", help="BLEU/METEOR/ROUGE-L/CIDEr, clinical efficacy and diversity",
                            description="P and R are JSON objects {study id: report}; R may be an R2Gen "
                                        "annotation.json.")
    p.add_argument("--pred", required=True, help="generated reports (JSON)")
    p.add_argument("--ref", required=True, help="reference reports (JSON or annotation.json)")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--uncertain", choices=("negative", "positive"), default="negative",
                   help="clinical efficacy: what an uncertain mention counts as")
    p.add_argument("--dataset", choices=("iu_xray", "mimic_cxr"), default="iu_xray", help="R2Gen cleaning rules")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (it needs Java)")
    p.add_argument("--train-reports", dest="train_reports",
                   help="the training reports (an annotation.json's train split, or a JSON {id: report}): adds the "
                        "share of generated sentences found in none of them (template-worded data only)")
    p.set_defaults(func=cmd_evaluate_reports)

    p = evaluate.add_parser("images", help="FID/KID (+ floor), conditional FID, MS-SSIM diversity, classifier mAUC",
                            description="GENERATED is a manifest (JSON/CSV/JSONL) of images with the reports "
                                        "that made them.")
    p.add_argument("--generated", required=True, help="manifest of generated images and their reports")
    p.add_argument("--real", help="real annotation for FID (R2Gen annotation.json or manifest)")
    p.add_argument("--real-split", dest="real_split", default="test")
    p.add_argument("--real-labels", dest="real_labels", choices=("file", "labeler"), default="file")
    p.add_argument("--classifier", help="folder of a classifier from `radloop train classifier` (for mAUC)")
    p.add_argument("--features", default="classifier",
                   help="'classifier', 'backbone:DIR' or 'timm:ARCH[:LOCAL_WEIGHTS]'")
    p.add_argument("--image-size", dest="image_size", type=int, default=128)
    p.add_argument("--min-count", dest="min_count", type=int, default=10, help="per-finding FID needs this many")
    p.add_argument("--image-root", dest="image_root",
                   help="folder the --real image paths are relative to (default: beside it, or its images/)")
    _outside_root_flag(p)
    p.add_argument("--out", help="write the metrics as JSON here")
    p.set_defaults(func=cmd_evaluate_images)


def _add_train_and_models(verbs: argparse._SubParsersAction, with_trainers: bool) -> None:
    """`radloop train NAME` (one sub-verb per registered trainer) and `radloop models`."""
    train = verbs.add_parser("train", help="train a model (`radloop models --family trainer` lists what)")
    train_verbs = train.add_subparsers(dest="train_verb", metavar="<what>", required=True)
    for verb, what in _trainers(with_trainers):
        p = train_verbs.add_parser(verb, help=what)
        p.add_argument("--config", help="experiment YAML (sections data, model, train; radcare also loss)")
        p.add_argument("overrides", nargs="*", metavar="key=value")
        p.set_defaults(func=cmd_train)

    p = verbs.add_parser("models", help="list every registered model and trainer, per family",
                         description="Names for model.name in configs, build_*() and `radloop train`.")
    p.add_argument("--family", help="one family (backbone, tower, report_decoder, ldm, trainer, ...)")
    p.add_argument("--filter", default="*", help="fnmatch pattern, e.g. '*_tiny'")
    p.set_defaults(func=cmd_models)


def _add_zoo(verbs: argparse._SubParsersAction) -> None:
    """`radloop zoo`: the model zoo's entries (configs/zoo/index*.yaml, one index per generation)."""
    zoo = verbs.add_parser("zoo", help="list, train and export the model zoo (load entries as zoo:NAME)"
                           ).add_subparsers(dest="zoo_verb", metavar="<what>", required=True)
    zoo.add_parser("list", help="every entry, whether it is trained, its size and recipe").set_defaults(func=cmd_zoo)
    p = zoo.add_parser("train", help="train an entry from its recipe and export it into the zoo")
    p.add_argument("name")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides of the recipe")
    p.set_defaults(func=cmd_zoo)
    p = zoo.add_parser("export", help="write a finished run's best weights into the zoo (fp16, model card)")
    p.add_argument("name")
    p.add_argument("--run", help="the run folder (default runs/zoo/NAME)")
    p.set_defaults(func=cmd_zoo)
    p = zoo.add_parser("swap-decoder", help="give a diffusion entry the autoencoder of another entry that encodes "
                                            "identically (a decoder-only fine-tune), without retraining its UNet")
    p.add_argument("name", help="the pipeline entry (e.g. ldm64)")
    p.add_argument("source", help="the autoencoder entry (e.g. autoencoder64_ft)")
    p.set_defaults(func=cmd_zoo)
    p = zoo.add_parser("card", help="re-write an entry's model card with the zoo benchmark's results")
    p.add_argument("name")
    p.set_defaults(func=cmd_zoo)


#: `generate report` flags that override the model's saved decoding settings (unset: the model's value)
DECODING_FLAGS = ("num_beams", "label_consistent", "max_sentence_repeats", "no_repeat_ngram_size")


def _decoding_flags(p: argparse.ArgumentParser) -> None:
    """Decoding flags whose default is the model's own setting (its generation_config.json)."""
    p.add_argument("--num-beams", dest="num_beams", type=int, help="1 = greedy (default: the model's)")
    p.add_argument("--label-consistent", dest="label_consistent", action=argparse.BooleanOptionalAction,
                   help="refuse sentences that contradict an earlier one (default: the model's)")
    p.add_argument("--max-sentence-repeats", dest="max_sentence_repeats", type=int,
                   help="how often one sentence may occur, 0 = no limit (default: the model's)")
    p.add_argument("--no-repeat-ngram-size", dest="no_repeat_ngram_size", type=int,
                   help="forbid repeating n-grams of this size, 0 = off (default: the model's)")


def _add_generate(verbs: argparse._SubParsersAction) -> None:
    """`radloop generate report|image`."""
    generate = verbs.add_parser("generate", help="generate with a trained model").add_subparsers(
        dest="generate_verb", metavar="<what>", required=True)
    p = generate.add_parser("report", help="write reports for one split of an annotation",
                            description="Writes {study id: report} JSON, ready for `radloop evaluate reports`.")
    renamed_flag(p, "--report-model", "--checkpoint", help="a report-model folder or zoo: name (required)")
    p.add_argument("--annotation", required=True, help="annotation.json / manifest with the images")
    p.add_argument("--image-root", dest="image_root",
                   help="folder the image paths are relative to (default: beside the annotation, or its images/)")
    _outside_root_flag(p)
    p.add_argument("--split", default="test")
    _decoding_flags(p)
    p.add_argument("--out", required=True, help="output JSON")
    p.set_defaults(func=cmd_generate_report)

    p = generate.add_parser("image", help="draw chest X-rays from reports with a trained diffusion pipeline",
                            description="Writes one PNG per report and a manifest.jsonl (synthetic=true).")
    renamed_flag(p, "--pipeline", "--checkpoint", help="a pipeline folder or zoo: name (required)")
    p.add_argument("--report", action="append", help="report text (repeatable)")
    p.add_argument("--reports-file", dest="reports_file", help="a text file, one report a line")
    p.add_argument("--unconditional", type=int, default=0, metavar="N",
                   help="also draw N samples without a report (an empty --report is refused)")
    sampling_flags(p)
    p.add_argument("--sampler", choices=("ddim", "dpmsolver++"), help="default: the pipeline's")
    p.add_argument("--seed", type=int, default=0, help="the batch from report k on is seeded with seed + k")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_generate_image)


def build_parser(with_trainers: bool = True) -> argparse.ArgumentParser:
    """The ``radloop`` parser; ``with_trainers=False`` leaves out the ``train`` sub-verbs, whose
    modules take seconds to import, when the command line does not train."""
    parser = argparse.ArgumentParser(
        prog="radloop", description="RadLoop: chest X-ray report generation, report-to-image generation, and the loop."
    )
    parser.add_argument("--version", action="version", version=f"radloop {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)

    _add_synth(verbs)
    _add_data(verbs)
    _add_evaluate(verbs)
    _add_train_and_models(verbs, with_trainers)
    _add_generate(verbs)
    _add_zoo(verbs)
    add_workflows(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``radloop`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(with_trainers="train" in argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, FileExistsError, FileNotFoundError, ValueError) as err:
        sys.stderr.write(f"radloop: error: {err}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
