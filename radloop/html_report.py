"""A self-contained HTML report: images inlined as base64 PNGs, no scripts, no network.

Sections (each a ``<section id=...>``, which the demo test checks): ``stages``, ``metrics``,
``images``, ``counterfactuals``, ``reports``, ``roundtrip``, ``augmentation``, ``curves``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shared.io import atomic_write_text
from shared.labels import CHEXPERT_LABELS, PATHOLOGY_LABELS
from shared.text.labeler import ReportLabeler

__all__ = ["png_data_uri", "image_grid", "curves_png", "highlight_findings", "metric_table", "render_html", "SECTIONS",
           "DemoPage", "write_demo_report"]

SECTIONS = ("stages", "metrics", "images", "counterfactuals", "reports", "roundtrip", "augmentation", "curves")


def png_data_uri(image: Image.Image | np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI; arrays are (H, W) floats in [0, 1]."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8), mode="L")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_grid(rows: Sequence[Sequence[np.ndarray]], scale: int = 2, pad: int = 2) -> Image.Image:
    """Tile (H, W) [0, 1] arrays row by row (rows may differ in length), enlarged ``scale`` times."""
    h, w = rows[0][0].shape
    ncol = max(len(r) for r in rows)
    canvas = np.ones((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad), np.float32)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = np.clip(img, 0, 1)
    im = Image.fromarray((canvas * 255).round().astype(np.uint8), mode="L")
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST)


def curves_png(histories: Mapping[str, Sequence[Mapping[str, float]]],
               selection: Mapping[str, str] | None = None) -> Image.Image:
    """Training loss and the validation selection metric (``selection[name]``, without ``val/``)
    against step, one panel per model."""
    selection = selection or {}
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [n for n, h in histories.items() if any("train/loss" in r for r in h)]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(3.2 * max(len(names), 1), 2.6), squeeze=False)
    for ax, (name, metric) in zip(axes[0], ((n, selection.get(n)) for n in names), strict=False):
        hist = histories[name]
        loss = [(r["step"], r["train/loss"]) for r in hist if "train/loss" in r]
        ax.plot(*zip(*loss, strict=True), color="tab:blue")
        ax.set_ylabel("train loss", fontsize=8, color="tab:blue")
        val = [(r["step"], r[f"val/{metric}"]) for r in hist
               if metric and isinstance(r.get(f"val/{metric}"), float) and math.isfinite(r[f"val/{metric}"])]
        if val:
            twin = ax.twinx()
            twin.plot(*zip(*val, strict=True), "o-", color="tab:orange", markersize=3)
            twin.set_ylabel(f"val {metric}", fontsize=8, color="tab:orange")
            twin.tick_params(labelsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def highlight_findings(report: str, labeler: ReportLabeler, reference: set[str] | None = None) -> str:
    """HTML of ``report`` with each positive mention marked and named; green when the reference
    report states the same finding, red when it does not (``reference`` = its positive findings)."""
    result = labeler.label(report)
    text = html.escape(report)
    for m in sorted({(m.text, m.label) for m in result.mentions if m.value == 1}, key=lambda x: -len(x[0])):
        mention, label = m
        cls = "" if reference is None else (" ok" if label in reference else " bad")
        esc = html.escape(mention)
        text = text.replace(esc, f'<mark class="f{cls}" title="{html.escape(label)}">{esc}</mark>', 1)
    return text


def positive_findings(report: str, labeler: ReportLabeler) -> set[str]:
    labels = labeler.label(report).labels
    return {n for n in CHEXPERT_LABELS if labels[n] == 1}


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:.3f}"
    return html.escape(str(v))


def metric_table(rows: Mapping[str, Any] | Sequence[Sequence[Any]], header: Sequence[str] = ("metric", "value")) -> str:
    """An HTML table from ``{name: value}`` or a list of rows."""
    items = rows.items() if isinstance(rows, Mapping) else rows
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in items)
    return f"<table><tr>{head}</tr>{body}</table>"


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
td:last-child{font-variant-numeric:tabular-nums}img{image-rendering:pixelated;max-width:100%}
mark.f{background:#fff3b0}mark.ok{background:#c8f0c8}mark.bad{background:#f6c4c4}.note{color:#555;font-size:.9em}
figure{display:inline-block;margin:.3em;text-align:center}figcaption{font-size:.8em;color:#555}
"""


def render_html(title: str, sections: Mapping[str, tuple[str, str]], intro: str = "") -> str:
    """The page: ``sections`` maps each id in :data:`SECTIONS` to (heading, inner HTML)."""
    missing = [s for s in SECTIONS if s not in sections]
    if missing:
        raise ValueError(f"report sections missing: {missing}")
    body = "".join(f'<section id="{sid}"><h2>{html.escape(head)}</h2>{inner}</section>'
                   for sid, (head, inner) in sections.items())
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><p class=\"note\">{intro}</p>"
            f"{body}</body></html>\n")


# -- the demo's page -------------------------------------------------------------------------------
@dataclass
class DemoPage:
    """What the demo measured, as the page shows it.

    ``test``: the test split as :func:`evaluation.image_eval.load_image_set` returns it, of which the
    first ``n`` studies were evaluated; ``evaluation``, ``counterfactuals``, ``augmentation`` and
    ``roundtrip``: the stages' outputs; ``times``: (stage, seconds); ``histories``: each trained
    model's ``history.json``; ``results``: the numbers also written to ``results.json``.
    """

    test: dict[str, Any]
    n: int
    evaluation: dict[str, Any]
    counterfactuals: dict[str, Any]
    augmentation: dict[str, Any]
    roundtrip: dict[str, Any]
    times: list[tuple[str, float]]
    histories: dict[str, list[dict[str, float]]]
    results: dict[str, Any]
    intro: str


#: the validation metric each demo model is selected on (its curve is drawn)
_SELECTION = {"backbone": "i2t_label_precision@5", "report": "ce_micro_f1", "classifier": "mauc",
              "diffusion": "denoising_loss"}


def rows_by_finding(labels: np.ndarray, per_row: int) -> list[tuple[str, list[int]]]:
    """Up to ``per_row`` study indices for each finding present (normal studies under No Finding)."""
    out = []
    for name in ("No Finding", *PATHOLOGY_LABELS):
        idx = np.flatnonzero(labels[:, CHEXPERT_LABELS.index(name)] == 1)[:per_row].tolist()
        if idx:
            out.append((name, idx))
    return out


def _stages_section(page: DemoPage) -> str:
    total = sum(t for _, t in page.times)
    rows = [(name, f"{sec:.1f}") for name, sec in page.times] + [("total (before this page)", f"{total:.1f}")]
    return metric_table(rows, ("stage", "seconds"))


def _metrics_section(page: DemoPage) -> str:
    img, rep = page.results["image_metrics"], page.results["report_metrics"]
    keys = ("n", "bleu_1", "bleu_4", "meteor", "rouge_l", "cider", "ce_micro_f1", "ce_macro_f1", "unique_report_rate")
    tables = "<h3>image -> report (test split)</h3>" + metric_table({k: rep[k] for k in keys if k in rep})
    tables += "<h3>report -> image (test reports)</h3>" + metric_table(
        {"classifier mAUC on generated images": img["mauc_generated"],
         "classifier mAUC on the real images (ceiling)": img["mauc_real"],
         "FID (backbone features)": img["fid"], "FID real vs real (floor)": img["fid_floor"],
         "FID / floor": img["fid_over_floor"], "KID": img["kid_mean"]})
    return tables + "<h3>counterfactual edits</h3>" + metric_table(page.counterfactuals["metrics"])


def _images_section(page: DemoPage) -> str:
    real = page.test["images"][:page.n, 0].numpy()
    fake = page.evaluation["gen_images"][:, 0].numpy()
    grid_rows, captions = [], []
    blank = np.ones_like(real[0])
    for name, idx in rows_by_finding(page.test["labels"][:page.n], 4):
        pad = [blank] * (4 - len(idx))  # keep the generated block in the same columns on every row
        grid_rows.append([real[i] for i in idx] + pad + [blank] + [fake[i] for i in idx])
        captions.append(html.escape(name))
    return ("<p class=\"note\">Each row: up to 4 real test images with the finding (left), then the images generated "
            f"from the same reports (right). Rows: {', '.join(captions)}.</p>"
            f"<img src=\"{png_data_uri(image_grid(grid_rows))}\" alt=\"real vs generated\">")


def _counterfactuals_section(page: DemoPage) -> str:
    cf = page.counterfactuals
    cf_rows, cf_text = [], []
    for e, edited in zip(cf["edits"], cf["edited"][:, 0].numpy(), strict=True):
        diff = np.abs(edited - e.source)
        cf_rows.append([e.source, edited, e.true_cf, diff / max(float(diff.max()), 1e-6)])
        change = ", ".join([f"+{a}" for a in e.added] + [f"-{r}" for r in e.removed])
        cf_text.append((e.study_id, change, e.new_report))
    return ("<p class=\"note\">Columns: source, edited, true counterfactual (SynthCXR re-rendered with the new "
            "findings), |edited - source|.</p>"
            f"<img src=\"{png_data_uri(image_grid(cf_rows))}\" alt=\"counterfactual rows\">"
            + metric_table(cf_text, ("study", "edit", "new report")))


def _reports_section(page: DemoPage, labeler: ReportLabeler) -> str:
    test, generated = page.test, page.evaluation["gen_reports"]
    rows = []
    for i in range(min(page.n, 12)):
        ref_pos = positive_findings(test["reports"][i], labeler)
        rows.append(f"<tr><td>{html.escape(test['ids'][i])}</td><td>{highlight_findings(test['reports'][i], labeler)}"
                    f"</td><td>{highlight_findings(generated[i], labeler, ref_pos)}</td></tr>")
    return ("<p class=\"note\">Findings the labeler reads are marked; in generated reports green = also in the "
            "reference, red = not in the reference.</p><table><tr><th>study</th><th>reference</th><th>generated</th>"
            "</tr>" + "".join(rows) + "</table>")


def _roundtrip_section(page: DemoPage) -> str:
    rr, ri = page.roundtrip["reports"], page.roundtrip["images"]
    out = metric_table({"report round trip: label-set agreement": rr["label_set_agreement"],
                        "report round trip: CE micro-F1": rr["ce_micro_f1"],
                        "image round trip: embedding cosine": ri["embedding_cosine"],
                        "image round trip: SSIM": ri["ssim"]})
    out += metric_table([(k, v["n"], v["survival"]) for k, v in rr["per_finding"].items()],
                        ("finding", "n", "survives report->image->report"))
    out += "<h4>worst report round trips</h4>" + metric_table(
        [(w["label_errors"], w["input"], w["output"]) for w in rr["worst"]], ("label errors", "input", "output"))
    k = min(len(ri["reports"]), 6)
    pairs = [[page.test["images"][i, 0].numpy() for i in range(k)], [ri["regenerated"][i, 0].numpy() for i in range(k)]]
    return out + ("<h4>image -> report -> image (top: inputs, bottom: regenerated from the generated reports)</h4>"
                  f"<img src=\"{png_data_uri(image_grid(pairs))}\" alt=\"image round trips\">"
                  + metric_table([(i, ri["reports"][i]) for i in range(k)], ("image", "generated report")))


def _augmentation_section(page: DemoPage) -> str:
    aug = page.augmentation
    pre = page.results.get("augmentation_precomputed")
    rates = [(f, r["generated"], r["accepted"], r["rate"], r["mean_probability"]) for f, r in aug["findings"].items()]
    rows = [[img[0].numpy() for img, s in zip(aug["images"], aug["studies"], strict=True) if s["finding"] == f]
            for f in aug["rare_findings"]]
    grid = (f"<img src=\"{png_data_uri(image_grid(rows))}\" alt=\"synthetic rare cases\">"
            if any(rows) else "")
    return ((precomputed_augmentation(pre) if pre else "")
            + "<h4>This run: synthetic cases of the rarest findings through the quality gate</h4>"
            f"<p>Rare findings of the training split: {html.escape(', '.join(aug['rare_findings']))}. Each image is "
            "drawn from a report composed of training sentences (one states the finding); the gate keeps it when "
            f"an independent reader ({html.escape(str(aug['reader']))}'s findings head, never the judge) reads the "
            f"finding with probability &ge; {aug['threshold']}. One row of images per finding.</p>"
            + metric_table(rates, ("finding", "generated", "accepted", "acceptance rate", "mean probability"))
            + grid
            + metric_table([(s["finding"], "kept" if s["accepted"] else "rejected", s["probability"], s["report"])
                            for s in aug["studies"]], ("finding", "gate", "reader's probability", "report")))


def _interval(v: Mapping[str, float]) -> str:
    return f"{v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"


def precomputed_augmentation(pre: Mapping[str, Any]) -> str:
    """The zoo augmentation benchmark's answer (``radloop.augment.run_augment`` output as
    ``benchmarks/augment_synth.py`` writes it), labelled as precomputed, with its command."""
    tests = pre.get("significance", {})
    rows = []
    for arm in pre["arms"]:
        cells = [arm] + [_interval(pre["summary"][key][arm]) for key in ("rare_f1_mean", "ce_micro_f1", "ce_macro_f1")]
        d = pre["summary"]["rare_f1_mean"].get(f"difference/{arm}")
        cells += [_interval(d) if d else "", f"{tests[f'{arm} vs real']['p_value']:.3f}"
                  if f"{arm} vs real" in tests else ""]
        rows.append(cells)
    return ("<h4>Precomputed: the zoo augmentation benchmark (not measured in this run)</h4>"
            f"<p class=\"note\">{html.escape(pre.get('command', ''))} &mdash; rare findings "
            f"{html.escape(', '.join(pre['rare_findings']))}, seeds {html.escape(str(pre['seeds']))}, "
            f"{pre.get('test_studies', '?')} test studies of a fresh seed. Verdict (real+synthetic vs real): "
            f"<b>{html.escape(pre['verdict'])}</b>"
            + (f"; vs the up-weighted real arm: <b>{html.escape(pre['verdict_vs_upweighted'])}</b>"
               if "verdict_vs_upweighted" in pre else "") + ".</p>"
            + metric_table(rows, ("arm", "rare-finding F1 (mean, 95% CI over seeds)", "CE micro-F1", "CE macro-F1",
                                  "rare F1 difference from real", "p (approximate randomization)")))


def write_demo_report(out: Path, page: DemoPage) -> Path:
    """``report.html`` (every section of :data:`SECTIONS`) and, when the run trained models,
    ``training_curves.png`` under ``out``."""
    if any(page.histories.values()):
        curves = curves_png(page.histories, _SELECTION)
        curves.save(out / "training_curves.png")
        curves_html = f"<img src=\"{png_data_uri(curves)}\" alt=\"training curves\">"
    else:
        curves_html = "<p>No model was trained in this run: every model comes from the zoo, trained once.</p>"
    sections = {
        "stages": ("Stages and times", _stages_section(page)),
        "metrics": ("Metrics", _metrics_section(page)),
        "images": ("Real vs generated, per finding", _images_section(page)),
        "counterfactuals": ("Counterfactuals", _counterfactuals_section(page)),
        "reports": ("Generated reports", _reports_section(page, ReportLabeler())),
        "roundtrip": ("Round trip", _roundtrip_section(page)),
        "augmentation": ("Rare-finding augmentation", _augmentation_section(page)),
        "curves": ("Training curves", curves_html),
    }
    path = out / "report.html"
    atomic_write_text(path, render_html("RadLoop demo report", sections, page.intro))
    return path
