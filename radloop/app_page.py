"""The Gradio page of ``radloop app``: one function per tab, each wiring its widgets to the handlers of
:mod:`radloop.app` (which hold no UI code and are tested without a browser)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .app import (
    _FINDING_WORDS,
    IMAGE_HEIGHT,
    SAMPLERS,
    SEVERITIES,
    SIDES,
    AppModels,
    _guarded,
    _read_upload,
    _shown,
    describe_image,
    edit_image,
    finding_sentence,
    generate_images,
    round_trip,
)

__all__ = ["build_app"]


def _generate_tab(gr: Any, models: AppModels) -> None:
    """1. report -> X-ray: the sliders start at the pipeline's saved sampling defaults."""
    sampling = models.pipeline.sampling
    with gr.Tab("Report -> X-ray"):
        with gr.Row():
            with gr.Column():
                g_report = gr.Textbox(label="Report", lines=3, elem_id="gen_report",
                                      value="Moderate left pleural effusion. Mild cardiomegaly.")
                with gr.Row():
                    g_seed = gr.Number(label="Seed", value=0, precision=0)
                    g_steps = gr.Slider(1, 100, value=sampling.num_inference_steps, step=1,
                                        label="Inference steps (num_inference_steps)")
                    g_guidance = gr.Slider(1.0, 10.0, value=sampling.guidance_scale, step=0.5,
                                           label="Guidance scale (guidance_scale)", info="the pipeline's saved default")
                shown = {v: k for k, v in SAMPLERS.items()}  # pipeline key -> the name shown
                g_sampler = gr.Dropdown(list(SAMPLERS), value=shown.get(sampling.sampler, "DPM-Solver++"),
                                        label="Sampler")
                g_button = gr.Button("Generate", variant="primary", elem_id="gen_button")
            with gr.Column():
                g_gallery = gr.Gallery(label="Generated X-rays", columns=2, height=300, elem_id="gen_gallery")
                g_status = gr.Markdown(elem_id="gen_status")
        g_high = gr.HighlightedText(label="The labeler's reading")
        g_table = gr.Dataframe(headers=["finding", "status", "severity", "laterality", "zones"],
                               label="Findings of the report")
        g_judge = gr.Label(num_top_classes=5, label="Judge: probability of each finding on the images")

        def on_generate(report: str, seed: float, steps: float, guidance: float, sampler: str,
                        progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008 (gradio's idiom)
            progress(0.1, desc="denoising")
            r = generate_images(models, report, int(seed or 0), int(steps), float(guidance), sampler)
            return r["images"], r["highlighted"], r["findings"], r["judge"]

        g_button.click(_guarded(on_generate, 4), [g_report, g_seed, g_steps, g_guidance, g_sampler],
                       [g_gallery, g_high, g_table, g_judge, g_status])


def _describe_tab(gr: Any, models: AppModels, names: list[str], pick_example: Callable[[str], tuple]) -> None:
    """2. X-ray -> report: the beam slider starts at the model's saved decoding."""
    with gr.Tab("X-ray -> report"):
        with gr.Row():
            with gr.Column():
                d_file = gr.File(label="X-ray (PNG, JPEG or DICOM)", elem_id="describe_file")
                d_example = gr.Dropdown(names, label="...or a SynthCXR example", value=None)
                d_beams = gr.Slider(1, 5, value=models.generator.decoding.num_beams, step=1,
                                    label="Beams (1 = greedy)",
                                    info=f"the model's decoding: {models.generator.decoding.describe()}")
                d_button = gr.Button("Write the report", variant="primary", elem_id="describe_button")
            with gr.Column():
                d_preview = gr.Image(label="Input", type="pil", interactive=False, height=IMAGE_HEIGHT)
                d_status = gr.Markdown(elem_id="describe_status")
                d_report = gr.HighlightedText(label="Generated report", elem_id="describe_report")
                d_judge = gr.Label(num_top_classes=5, label="Judge: probability of each finding")

        def on_describe(file: Any, beams: float, progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
            progress(0.2, desc="reading the image")
            r = describe_image(models, _read_upload(file), int(beams))
            return _shown(r["preview"]), r["highlighted"], r["judge"]

        d_example.change(lambda name: pick_example(name)[0], d_example, d_file)
        d_button.click(_guarded(on_describe, 3), [d_file, d_beams], [d_preview, d_report, d_judge, d_status])


def _edit_tab(gr: Any, models: AppModels, examples: dict[str, Any], pick_example: Callable[[str], tuple]) -> None:
    """3. counterfactual editor: a SynthCXR example brings its true counterfactual for comparison."""
    sampling, names = models.pipeline.sampling, list(examples)
    with gr.Tab("Counterfactual editor"):
        with gr.Row():
            with gr.Column():
                e_file = gr.File(label="Source X-ray (PNG, JPEG or DICOM)", elem_id="edit_file")
                e_example = gr.Dropdown(names, label="...or a SynthCXR example (with its true counterfactual)",
                                        value=None, elem_id="edit_example")
                e_source = gr.Textbox(label="Source report", lines=2, elem_id="edit_source")
                e_new = gr.Textbox(label="Edited report", lines=2, elem_id="edit_new")
                with gr.Row():
                    f_finding = gr.Dropdown(list(_FINDING_WORDS), value="Pleural Effusion", label="Finding")
                    f_action = gr.Radio(["add", "remove"], value="add", label="")
                    f_severity = gr.Dropdown(list(SEVERITIES), value="moderate", label="Severity")
                    f_side = gr.Dropdown(list(SIDES), value="left", label="Side")
                f_button = gr.Button("Write this into the edited report")
                with gr.Row():
                    e_strength = gr.Slider(0.1, 1.0, value=sampling.edit_strength, step=0.05,
                                           label="Strength (strength)")
                    e_guidance = gr.Slider(1.0, 10.0, value=sampling.edit_guidance_scale, step=0.5,
                                           label="Guidance scale (guidance_scale)")
                    e_masked = gr.Checkbox(value=True, label="Keep the rest of the image (DiffEdit mask)")
                e_button = gr.Button("Edit", variant="primary", elem_id="edit_button")
            with gr.Column():
                e_status = gr.Markdown(elem_id="edit_status")
                with gr.Row():
                    e_edited = gr.Image(label="Edited", type="pil", elem_id="edit_edited", height=IMAGE_HEIGHT)
                    e_diff = gr.Image(label="Difference (red brighter, blue darker)", type="pil",
                                      elem_id="edit_diff", height=IMAGE_HEIGHT)
                with gr.Row():
                    e_mask = gr.Image(label="Edit mask", type="pil", height=IMAGE_HEIGHT)
                    e_truth = gr.Image(label="True counterfactual (SynthCXR examples)", type="pil",
                                       height=IMAGE_HEIGHT)
                e_changes = gr.Dataframe(headers=["finding", "change", "judge before", "judge after",
                                                  "judge on the truth"], label="Changed findings")

        def on_form(new: str, source: str, finding: str, action: str, severity: str, side: str) -> str:
            base = (new or source or "").strip()
            return (base + " " if base else "") + finding_sentence(finding, action, severity, side)

        def on_edit(file: Any, source: str, new: str, strength: float, guidance: float, masked: bool,
                    example: str | None, progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
            progress(0.1, desc="inverting the source")
            truth = examples[example].true_cf if example in examples and \
                (examples[example].new_report or "").strip() == (new or "").strip() else None
            r = edit_image(models, _read_upload(file), source, new, strength, masked, true_cf=truth,
                           guidance=guidance)
            return (_shown(r["edited"]), _shown(r["difference"]), _shown(r["mask"]), _shown(truth),
                    r["changes"])

        e_example.change(lambda name: pick_example(name), e_example, [e_file, e_source, e_new, e_truth])
        f_button.click(_guarded(lambda *a: (on_form(*a),), 1),
                       [e_new, e_source, f_finding, f_action, f_severity, f_side], [e_new, e_status])
        e_button.click(_guarded(on_edit, 5), [e_file, e_source, e_new, e_strength, e_guidance, e_masked, e_example],
                       [e_edited, e_diff, e_mask, e_truth, e_changes, e_status])


def _trip_tab(gr: Any, models: AppModels) -> None:
    """4. round trip: report -> X-ray -> report, or X-ray -> report -> X-ray."""
    with gr.Tab("Round trip"):
        with gr.Row():
            with gr.Column():
                r_report = gr.Textbox(label="Report (report -> X-ray -> report)", lines=2, elem_id="trip_report")
                r_file = gr.File(label="...or an X-ray (X-ray -> report -> X-ray)")
                r_button = gr.Button("Go round", variant="primary", elem_id="trip_button")
            with gr.Column():
                r_status = gr.Markdown(elem_id="trip_status")
                r_image = gr.Image(label="Image on the way", type="pil", elem_id="trip_image", height=IMAGE_HEIGHT)
                r_text = gr.HighlightedText(label="Report on the way", elem_id="trip_text")
                r_note = gr.Markdown()

        def on_trip(report: str, file: Any, progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
            progress(0.1, desc="going round")
            image = None if (report or "").strip() else _read_upload(file)
            r = round_trip(models, report, image)
            note = r.get("kept") or f"SSIM between the input and the regenerated X-ray: {r['ssim']}"
            return _shown(r["image"]), r["highlighted"], note

        r_button.click(_guarded(on_trip, 3), [r_report, r_file], [r_image, r_text, r_note, r_status])


def build_app(models: AppModels) -> Any:
    """The ``gr.Blocks`` page (not launched)."""
    import gradio as gr

    examples = {e.name: e for e in models.examples}

    def pick_example(name: str) -> tuple:
        e = examples.get(name)
        if e is None:
            return None, "", "", None
        path = Path(tempfile.mkdtemp(prefix="radloop_ex_")) / "example.png"
        e.image.save(path)
        return str(path), e.report, e.new_report or "", e.true_cf

    with gr.Blocks(title="RadLoop") as page:
        gr.Markdown("# RadLoop\nChest X-rays from reports, reports from X-rays, and counterfactual edits "
                    "(SynthCXR models: synthetic 64 px radiographs, not for clinical use).")
        _generate_tab(gr, models)
        _describe_tab(gr, models, list(examples), pick_example)
        _edit_tab(gr, models, examples, pick_example)
        _trip_tab(gr, models)
    return page
