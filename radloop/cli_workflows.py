"""``radloop demo | augment | app | roundtrip``: the workflows that run the loop."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from shared.config import ConfigError, load_config, save_run_config
from shared.io import atomic_write_text

from .cli_common import echo as _echo
from .cli_common import outside_root_flag as _outside_root_flag
from .cli_common import renamed_flag, require, sampling_flags

__all__ = ["add_workflows"]


def cmd_demo(args: argparse.Namespace) -> int:
    from shared.training.lock import RunLock

    from .demo import run_demo

    with RunLock(args.out):  # a second demo into this folder refuses while this one runs
        results = run_demo(args.out, quick=args.quick, seed=args.seed, from_scratch=args.from_scratch, echo=_echo)
    _echo("")
    _echo("| stage | seconds |")
    _echo("|---|---:|")
    for name, seconds in results["stage_seconds"].items():
        _echo(f"| {name} | {seconds:.1f} |")
    _echo(f"| total | {results['total_seconds']:.1f} |")
    _echo("")
    _echo(f"report: {Path(args.out) / 'report.html'} (numbers in {Path(args.out) / 'results.json'})")
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    from shared.training.lock import RunLock

    from .augment import AugmentExperiment, run_augment

    cfg = load_config(AugmentExperiment(), args.config, args.overrides)
    with RunLock(cfg.output_dir):  # before this run's config replaces a running one's
        save_run_config(cfg, cfg.output_dir, argv=sys.argv)
        result = run_augment(OmegaConf.to_object(cfg))
    d = result["summary"]["rare_f1_mean"]
    _echo(f"rare findings {result['rare_findings']}: rare-class CE F1 per arm (mean over seeds):")
    for arm in result["arms"]:
        line = f"  {arm}: {d[arm]['mean']:.3f}"
        if arm != "real":
            diff = d[f"difference/{arm}"]
            line += f", difference from real {diff['mean']:+.3f} [{diff['ci_low']:.3f}, {diff['ci_high']:.3f}]"
            test = result.get("significance", {}).get(f"{arm} vs real")
            if test:
                line += f", p = {test['p_value']:.3f}"
        _echo(line)
    _echo(f"verdict (real+synthetic vs real): {result['verdict']}")
    _echo(f"details in {cfg.output_dir}/augment_results.json")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("radloop app needs gradio: pip install 'radloop[app]'") from None
    from .app import main_app

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        _echo(f"serving on {args.host}: anyone who can reach this machine can use the app")
    return main_app(args.pipeline, args.report_model, args.judge or None, args.host, args.port)


def cmd_roundtrip(args: argparse.Namespace) -> int:
    from .roundtrip import run_roundtrip

    result = run_roundtrip(require(args, "--pipeline"), args.report_model, args.annotation, args.split, args.n,
                           args.num_inference_steps, args.guidance_scale, args.seed, ceiling=args.ceiling,
                           image_root=args.image_root, allow_outside_root=args.allow_outside_root)
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1, default=float) + "\n")
    for label, part in (("generator", result), ("ceiling: SynthCXR's renderer", result.get("ceiling"))):
        if part is None:
            continue
        rr, ri = part["report_to_image_to_report"], part["image_to_report_to_image"]
        _echo(f"{label}: report -> image -> report: label-set agreement {rr['label_set_agreement']:.3f}, "
              f"CE micro-F1 {rr['ce_micro_f1']:.3f} (n={rr['n']})")
        for name, v in rr["per_finding"].items():
            _echo(f"  {name}: survives {v['survival']:.2f} (n={v['n']})")
        _echo(f"{label}: image -> report -> image: embedding cosine {ri['embedding_cosine']:.3f}, "
              f"SSIM {ri['ssim']:.3f}")
    return 0


def add_workflows(verbs: argparse._SubParsersAction) -> None:
    """The workflows: `radloop demo`, `radloop augment`, `radloop roundtrip`."""
    p = verbs.add_parser("demo", help="run the whole loop on SynthCXR on a CPU",
                         description="Starts from the model zoo: fresh SynthCXR data -> evaluation -> "
                                     "counterfactuals -> augmentation -> round trip -> report.html. --from-scratch "
                                     "trains backbone, report model, classifier and diffusion first.")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="tiny models and data, under 2 minutes (used by the tests)")
    p.add_argument("--from-scratch", dest="from_scratch", action="store_true",
                   help="train every model for seconds instead of starting from the zoo")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = verbs.add_parser("augment", help="rare-finding augmentation with report2image, real vs real+synthetic",
                         description="Compose reports for rare findings, generate images, train the report model "
                                     "on real and on real+synthetic over seeds, compare with intervals.")
    p.add_argument("--config", help="YAML (keys of AugmentExperiment; 'report' holds a report experiment)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_augment)

    p = verbs.add_parser("app", help="a local web app: report -> X-ray, X-ray -> report, counterfactual editor",
                         description="Gradio app over the zoo's models (or any saved folders), on 127.0.0.1.")
    p.add_argument("--pipeline", default="zoo:ldm64", help="a ReportToCXRPipeline folder or zoo: name")
    p.add_argument("--report-model", dest="report_model", default="zoo:uar", help="a report-model folder or zoo: name")
    p.add_argument("--judge", default="zoo:judge64", help="a classifier folder or zoo: name ('' for none)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=None, help="default: gradio's (7860 or the next free one)")
    p.set_defaults(func=cmd_app)

    p = verbs.add_parser("roundtrip", help="report -> image -> report and image -> report -> image")
    renamed_flag(p, "--pipeline", "--diffusion", help="a ReportToCXRPipeline folder or zoo: name (required)")
    p.add_argument("--report-model", dest="report_model", required=True, help="a report-model folder")
    p.add_argument("--annotation", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=64, help="studies")
    sampling_flags(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-root", dest="image_root",
                   help="folder the annotation's image paths are relative to (default: beside it, or its images/)")
    _outside_root_flag(p)
    p.add_argument("--ceiling", action="store_true",
                   help="also with SynthCXR's own renderer in the generator's place (a SynthCXR annotation)")
    p.add_argument("--out", help="JSON with every metric and the worst cases")
    p.set_defaults(func=cmd_roundtrip)
