"""``radloop app``: a local Gradio app over the zoo's models (or any saved folders).

Four tabs: **Report -> X-ray** (generate, the labeler's reading of the report, the judge's
probabilities on the images), **X-ray -> report** (upload a PNG/JPEG/DICOM or pick a SynthCXR
example; the report with its findings highlighted), **Counterfactual editor** (edit the report or
add/remove a finding from a form; the edited image, the difference map, the edit mask and the
judge's probability of each changed finding before and after; for a SynthCXR example, the true
counterfactual) and **Round trip**.

The handlers are plain functions of :class:`AppModels` (tested in-process); :func:`build_app`
wires them into ``gr.Blocks``. A bad upload or input ends in a one-line message in the page's
status line, never a stack trace. The server binds to 127.0.0.1 unless told otherwise.

    radloop app                                  # zoo:ldm64, zoo:uar, zoo:judge64
    radloop app --pipeline runs/diffusion/best --report-model runs/report/best --port 7861
"""

from __future__ import annotations

import functools
import logging
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from evaluation.classifier import Judge
from image2report.generator import ReportGenerator
from report2image import ReportToCXRPipeline
from shared.data.dataset import DataError, to_grey
from shared.data.image_processor import postprocess
from shared.data.xray_file import read_xray
from shared.labels import CHEXPERT_LABELS, PATHOLOGY_LABELS
from shared.text.labeler import ReportLabeler

logger = logging.getLogger(__name__)

__all__ = ["AppModels", "Example", "load_models", "build_app", "generate_images", "describe_image", "edit_image",
           "round_trip", "highlight_findings", "finding_sentence", "SAMPLERS"]

#: the samplers offered, by the names people know them by -> the pipeline's keys (report2image.SAMPLERS)
SAMPLERS = {"DPM-Solver++": "dpmsolver++", "DDIM": "ddim"}
#: pixels an X-ray is shown at (the zoo's are 64 px; the browser scales them up)
IMAGE_HEIGHT = 256
SEVERITIES = ("", "small", "mild", "moderate", "large", "severe")
SIDES = ("", "left", "right", "bilateral")
#: the first words of each finding in a sentence written by the editor's form
_FINDING_WORDS = {"Enlarged Cardiomediastinum": "enlarged cardiomediastinum", "Cardiomegaly": "cardiomegaly",
                  "Lung Opacity": "airspace opacity", "Lung Lesion": "pulmonary nodule", "Edema": "pulmonary edema",
                  "Consolidation": "consolidation", "Pneumonia": "pneumonia", "Atelectasis": "atelectasis",
                  "Pneumothorax": "pneumothorax", "Pleural Effusion": "pleural effusion",
                  "Pleural Other": "pleural thickening", "Fracture": "rib fracture"}


class AppError(ValueError):
    """A problem with what the user gave; shown in the page as one line."""


@dataclass
class Example:
    """A SynthCXR study to try: the image, its report and, for an edit, the new report and the truth."""

    name: str
    image: Image.Image
    report: str
    new_report: str | None = None
    true_cf: Image.Image | None = None


@dataclass
class AppModels:
    pipeline: ReportToCXRPipeline
    generator: ReportGenerator
    judge: Judge | None = None
    labeler: ReportLabeler = field(default_factory=ReportLabeler)
    examples: list[Example] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.pipeline.image_size


def load_models(pipeline: str = "zoo:ldm64", report_model: str = "zoo:uar", judge: str | None = "zoo:judge64",
                examples: int = 6, seed: int = 0) -> AppModels:
    """The app's models by folder or ``zoo:`` name, plus ``examples`` SynthCXR studies (and edits with
    their true counterfactuals) rendered now at the larger of the two models' sides."""
    pipe = ReportToCXRPipeline.from_pretrained(pipeline)
    pipe.set_progress_bar_config(disable=True)
    models = AppModels(pipe, ReportGenerator.from_pretrained(report_model),
                       Judge.from_pretrained(judge) if judge else None)
    if examples:
        side = max(models.size, int(models.generator.model.config.image_size))
        models.examples = synth_examples(side, examples, seed)
    return models


def synth_examples(size: int, n: int, seed: int = 0) -> list[Example]:
    """``n`` SynthCXR test studies with an edit each (the true counterfactual rendered by SynthCXR)."""
    from synthcxr import SynthConfig, counterfactual_edits, generate_dataset

    folder = Path(tempfile.mkdtemp(prefix="radloop_app_"))
    generate_dataset(folder, SynthConfig(patients=max(n, 4), studies_per_patient=1, size=size, seed=seed,
                                         val_fraction=0.0, test_fraction=0.99, degraded_fraction=0.0,
                                         wrong_report_fraction=0.0), progress=False)
    out = []
    for k, e in enumerate(counterfactual_edits(folder, "test", n, seed)):
        change = ", ".join([f"+{a}" for a in e.added] + [f"-{r}" for r in e.removed])
        out.append(Example(f"example {k + 1} ({change})", _to_pil(e.source), e.source_report, e.new_report,
                           _to_pil(e.true_cf)))
    return out


# -- helpers ----------------------------------------------------------------------------
def _to_pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8), mode="L")


def _tensor01(image: Image.Image, size: int) -> torch.Tensor:
    """(1, 1, size, size) in [0, 1] of a grey PIL image, resized (bilinear) to the models' side."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None, None]


def _read_upload(file: Any) -> Image.Image:
    """The grey image of an uploaded file (a path or gradio's file object)."""
    if file is None:
        raise AppError("upload an X-ray (PNG, JPEG or DICOM) or pick an example first")
    path = getattr(file, "name", file)
    try:
        image = read_xray(path)
    except DataError as err:
        raise AppError(str(err).replace(str(Path(path).parent) + "/", "")) from None
    if min(image.size) < 16:
        raise AppError(f"{Path(path).name}: {image.size[0]} x {image.size[1]} px is too small for an X-ray")
    return image


def _check_report(report: str | None) -> str:
    report = (report or "").strip()
    if not report:
        raise AppError("type a report first (an empty report would draw an unconditional image)")
    if len(report) > 5000:
        raise AppError(f"the report has {len(report)} characters; 5000 at most")
    return report


def _judge(models: AppModels, images: torch.Tensor) -> list[dict[str, float]]:
    """The judge's finding probabilities of [0, 1] images (N, 1, S, S), one dict per image."""
    if models.judge is None:
        return [{} for _ in range(len(images))]
    probs = models.judge(images)
    return [{name: round(float(p[i]), 3) for i, name in enumerate(CHEXPERT_LABELS)} for p in probs]


def highlight_findings(report: str, labeler: ReportLabeler) -> list[tuple[str, str | None]]:
    """The report as (text, label) segments for ``gr.HighlightedText``: the clause of each positive or
    uncertain finding mention carries its finding's name (``"... (uncertain)"``), the rest None."""
    spans: list[tuple[int, int, str]] = []
    lower = report.lower()
    for m in labeler.label(report).mentions:
        if m.value == 0.0 or m.label == "No Finding":
            continue
        label = m.label + (" (uncertain)" if m.value == -1.0 else "")
        # the whole clause ("moderate left pleural effusion") when it is free, else the matched words
        for text in (m.clause, m.text):
            free = [f.span() for f in re.finditer(re.escape(text), lower)
                    if not any(f.start() < y and x < f.end() for x, y, _ in spans)]
            if text and free:
                spans.append((*free[0], label))
                break
    spans.sort()
    out: list[tuple[str, str | None]] = []
    pos = 0
    for a, b, label in spans:
        if a > pos:
            out.append((report[pos:a], None))
        out.append((report[a:b], label))
        pos = b
    if pos < len(report):
        out.append((report[pos:], None))
    return out


def findings_table(report: str, labeler: ReportLabeler) -> list[list[str]]:
    """Rows (finding, status, severity, laterality, zones) of the labeler's reading of a report."""
    rows = []
    for a in labeler.label(report).attributes:
        rows.append([a.name, "uncertain" if a.status == -1.0 else "positive", a.severity or "",
                     a.laterality or "", ", ".join(a.zones)])
    return rows or [["(no positive finding)", "", "", "", ""]]


def finding_sentence(finding: str, action: str, severity: str = "", side: str = "") -> str:
    """The sentence the editor's form writes: ``"Moderate left pleural effusion."`` or ``"No pneumothorax."``."""
    if finding not in _FINDING_WORDS:
        raise AppError(f"unknown finding {finding!r}")
    words = _FINDING_WORDS[finding]
    if action == "remove":
        return f"No {words}."
    text = " ".join(w for w in (severity, side, words) if w)
    return text[0].upper() + text[1:] + "."


def _shown(image: Image.Image | None) -> Image.Image | None:
    """An image enlarged to :data:`IMAGE_HEIGHT` for the page (browsers show a 64 px image at 64 px)."""
    if image is None or image.size[1] >= IMAGE_HEIGHT:
        return image
    side = IMAGE_HEIGHT
    return image.resize((round(image.size[0] * side / image.size[1]), side), Image.BICUBIC)


def _set_sampler(pipe: ReportToCXRPipeline, sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise AppError(f"unknown sampler {sampler!r} (choose {', '.join(SAMPLERS)})")
    pipe.use_sampler(SAMPLERS[sampler])


def difference_map(source: torch.Tensor, edited: torch.Tensor) -> Image.Image:
    """An RGB map of ``edited - source`` ([0, 1] images (1, 1, S, S)): red brighter, blue darker."""
    diff = (edited - source)[0, 0].numpy()
    scale = max(float(np.abs(diff).max()), 1e-6)
    rgb = np.zeros((*diff.shape, 3), np.float32)
    rgb[..., 0] = np.clip(diff / scale, 0, 1)
    rgb[..., 2] = np.clip(-diff / scale, 0, 1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8), mode="RGB")


# -- the four tabs' work -----------------------------------------------------------------
@torch.no_grad()
def generate_images(models: AppModels, report: str, seed: int = 0, steps: int | None = None,
                    guidance: float | None = None, sampler: str = "DPM-Solver++", n: int = 2) -> dict[str, Any]:
    """Report -> ``n`` X-rays: ``images`` (PIL), ``findings`` (the labeler's reading), ``judge``
    (mean probability of each finding over the images). Steps and guidance: None, the pipeline's."""
    report = _check_report(report)
    sampling = models.pipeline.sampling
    steps = sampling.num_inference_steps if steps is None else int(steps)
    guidance = sampling.guidance_scale if guidance is None else float(guidance)
    if not 1 <= steps <= 200:
        raise AppError(f"steps must be between 1 and 200, got {steps}")
    _set_sampler(models.pipeline, sampler)
    out = models.pipeline([report] * int(n), num_inference_steps=steps, guidance_scale=guidance,
                          generator=torch.Generator().manual_seed(int(seed)), output_type="pt")
    probs = _judge(models, out.images)
    mean = {k: round(float(np.mean([p[k] for p in probs])), 3) for k in probs[0]} if probs and probs[0] else {}
    return {"images": postprocess(out.images * 2 - 1, "pil"), "findings": findings_table(report, models.labeler),
            "highlighted": highlight_findings(report, models.labeler), "judge": mean}


@torch.no_grad()
def describe_image(models: AppModels, image: Image.Image, num_beams: int | None = None) -> dict[str, Any]:
    """X-ray -> report: ``report``, ``highlighted`` segments, ``judge`` probabilities of the image; the image is
    made with the report model's saved preprocessing and decoded with its saved settings (``num_beams``: None
    keeps the model's)."""
    x = models.generator.preprocess.transform(train=False)(to_grey(image))[None]
    report = models.generator.generate(x, num_beams=None if num_beams is None else int(num_beams))[0]
    probs = _judge(models, _tensor01(image, models.size))[0]
    return {"report": report, "highlighted": highlight_findings(report, models.labeler), "judge": probs,
            "preview": image}


def changed_findings(models: AppModels, source_report: str, new_report: str) -> tuple[list[str], list[str]]:
    """(findings the edit adds, findings it removes), by the labeler."""
    a = models.labeler.label_batch([source_report, new_report])
    names = list(CHEXPERT_LABELS)
    added = [n for n in PATHOLOGY_LABELS if a[1, names.index(n)] == 1 and a[0, names.index(n)] != 1]
    removed = [n for n in PATHOLOGY_LABELS if a[0, names.index(n)] == 1 and a[1, names.index(n)] != 1]
    return added, removed


@torch.no_grad()
def edit_image(models: AppModels, image: Image.Image, source_report: str, new_report: str,
               strength: float | None = None, masked: bool = True, steps: int | None = None,
               true_cf: Image.Image | None = None, guidance: float | None = None) -> dict[str, Any]:
    """Counterfactual edit: ``edited``, ``difference`` (RGB map), ``mask`` (or None), ``changes`` rows
    (finding, change, judge before, judge after, judge on the true counterfactual or ""). Strength, steps and
    guidance: None, the pipeline's edit defaults."""
    source_report, new_report = _check_report(source_report), _check_report(new_report)
    if new_report == source_report:
        raise AppError("the new report is the same as the source report: edit it first")
    sampling = models.pipeline.sampling
    strength = sampling.edit_strength if strength is None else float(strength)
    if not 0.1 <= strength <= 1.0:
        raise AppError(f"strength must be between 0.1 and 1, got {strength}")
    x = _tensor01(image, models.size)
    out = models.pipeline.counterfactual(x, [new_report], [source_report], strength=strength,
                                         num_inference_steps=steps, guidance_scale=guidance,
                                         output_type="pt",
                                         mask="auto" if masked else None)
    added, removed = changed_findings(models, source_report, new_report)
    before, after = _judge(models, x)[0], _judge(models, out.images)[0]
    truth = _judge(models, _tensor01(true_cf, models.size))[0] if true_cf is not None else {}
    # five columns always (the page's table has five): the last is blank without a true counterfactual
    rows = [[name, change, before.get(name, ""), after.get(name, ""), truth.get(name, "")]
            for change, names in (("added", added), ("removed", removed)) for name in names]
    mask = None if out.masks is None else Image.fromarray((out.masks[0, 0].numpy() * 255).astype(np.uint8), "L")
    return {"edited": postprocess(out.images * 2 - 1, "pil")[0], "difference": difference_map(x, out.images),
            "mask": mask, "changes": rows, "added": added, "removed": removed}


@torch.no_grad()
def round_trip(models: AppModels, report: str | None = None, image: Image.Image | None = None, seed: int = 0,
               steps: int = 20) -> dict[str, Any]:
    """report -> image -> report (``image``, ``report``) or image -> report -> image (``report``,
    ``image``, ``ssim``), whichever input is given (the report when both are)."""
    from shared.metrics.image import ssim_map

    if report and report.strip():
        gen = generate_images(models, report, seed, steps, n=1)
        back = describe_image(models, gen["images"][0])
        return {"image": gen["images"][0], "report": back["report"], "highlighted": back["highlighted"],
                "kept": _label_agreement(models, report, back["report"])}
    if image is None:
        raise AppError("type a report or upload an X-ray for the round trip")
    desc = describe_image(models, image)
    gen = generate_images(models, desc["report"], seed, steps, n=1)
    ssim = float(ssim_map(_tensor01(image, models.size), _tensor01(gen["images"][0], models.size)).mean())
    return {"image": gen["images"][0], "report": desc["report"], "highlighted": desc["highlighted"],
            "ssim": round(ssim, 3)}


def _label_agreement(models: AppModels, a: str, b: str) -> str:
    added, removed = changed_findings(models, a, b)
    if not added and not removed:
        return "every finding survived the round trip"
    return "; ".join(p for p in (f"lost: {', '.join(removed)}" if removed else "",
                                 f"new: {', '.join(added)}" if added else "") if p)


# -- the Gradio page ---------------------------------------------------------------------
def _guarded(fn: Callable[..., tuple], n_outputs: int) -> Callable[..., tuple]:
    """``fn``'s outputs plus an "ok" status, or empty outputs and the error's one line as the status."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args: Any) -> tuple:
        try:
            return (*fn(*args), "")
        except (AppError, DataError, ValueError) as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
        except Exception as err:  # never a stack trace in the page; the log keeps it
            logger.exception("app handler %s failed", fn.__name__)
            message = f"something went wrong ({type(err).__name__}); the server log has the details"
        return (*[gr.update() for _ in range(n_outputs)], f"**Error:** {message}")

    return wrapper


def build_app(models: AppModels) -> Any:
    """The ``gr.Blocks`` page (not launched); built by :mod:`radloop.app_page`, one function per tab."""
    from .app_page import build_app as build_page

    return build_page(models)


def launch_app(models: AppModels, host: str = "127.0.0.1", port: int | None = None, block: bool = True) -> Any:
    """Build and serve the page on ``host:port`` (127.0.0.1 by default: not reachable from elsewhere)."""
    page = build_app(models)
    page.queue()
    page.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block,
                show_error=False)
    return page


def main_app(pipeline: str, report_model: str, judge: str | None, host: str, port: int | None) -> int:
    """``radloop app``: load, serve, block until interrupted."""
    models = load_models(pipeline, report_model, judge)
    launch_app(models, host, port, block=True)
    return 0

